"""A loopback OpenAI images API, and the ``openai`` provider's conformance case.

``OpenAIFake`` answers ``POST /v1/images/generations`` with ``{"created", "data": [...]}``
(``b64_json``, or ``url`` links served from ``/files/``), ``GET /v1/models``, and, when armed,
each documented error in OpenAI's shape. It checks the Bearer key, and waits ``delay_s`` plus
``step_s`` per requested step (the ``steps`` extension) before answering, so a cancel has
something to cut short while a plain answer takes milliseconds.

Edits (providers.md section 13.1): ``POST /v1/images/edits`` takes multipart parts ``image``
(one) or ``image[]`` (several), an optional ``mask`` and form fields; ``POST
/v1/images/variations`` one ``image`` part and no prompt. Checked as OpenAI documents:
``prompt`` required for edits, every image part typed image/png, image/jpeg or image/webp
(``application/octet-stream`` -> 400 ``unsupported_file_mimetype``, the text quoted in
providers.md), the mask a PNG with an alpha channel and the first image's size, a variation's
image a square PNG. The messages of the missing-image, mask and variation errors are not
quoted in any source read (unverified wording; the ``{"error": {message, type, param,
code}}`` shape is the documented one). The answer paints the mask's fully transparent
pixels (or the whole image, without a mask) over the first input image, at ``size`` or the
input's size. ``edit_forms`` keeps (fields, [(part, filename, content type, bytes)]).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from conformance import CANARY_ENV, Setup, case
from fakekit import bearer_token, solid_png
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faults import serve_app
from PIL import Image

from imagegate.errors import (
    AuthError,
    ContentFiltered,
    InvalidRequest,
    ProtocolError,
    QuotaExceeded,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from imagegate.providers.openai import OpenAIConfig, OpenAIProvider


def _error(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> Any:
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "invalid_api_key": _error(
        401,
        "Incorrect API key provided: sk-canar*****8a0b. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "rate_limited": _error(
        429,
        "Rate limit reached for images per minute. Please try again in 1s.",
        "requests",
        "rate_limit_exceeded",
    ),
    "insufficient_quota": _error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    ),
    "content_policy_violation": _error(
        400,
        "Your request was rejected as a result of our safety system.",
        "invalid_request_error",
        "content_policy_violation",
    ),
    "moderation_blocked": _error(
        400,
        "Your request was rejected by the safety system.",
        "image_generation_user_error",
        "moderation_blocked",
    ),
    "invalid_param": _error(
        400,
        "'7x7' is not one of ['256x256', '512x512', '1024x1024'] - 'size'",
        "invalid_request_error",
        None,
        "size",
    ),
    "server_error": _error(
        500, "The server had an error while processing your request.", "server_error", None
    ),
    "missing_image": _error(
        400,
        "Missing required parameter: 'image'.",
        "invalid_request_error",
        "missing_required_parameter",
        "image",
    ),
    "unsupported_file_mimetype": _error(
        400,
        "Invalid file 'image': unsupported mimetype ('application/octet-stream'). Supported "
        "file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
        "invalid_request_error",
        "unsupported_file_mimetype",
        "image",
    ),
    "mask_size_mismatch": _error(
        400,
        "Invalid mask: the mask must have the same dimensions as the image.",
        "invalid_request_error",
        "invalid_mask",
        "mask",
    ),
    "not_square_png": _error(
        400,
        "Uploaded image must be a square PNG and less than 4 MB.",
        "invalid_request_error",
        "invalid_image",
        "image",
    ),
    "overloaded": _error(503, "The engine is currently overloaded.", "server_error", None),
}
"""Each documented error: its status and OpenAI's error body."""

MAPPED = {
    "invalid_api_key": AuthError,
    "rate_limited": RateLimited,
    "insufficient_quota": QuotaExceeded,
    "content_policy_violation": ContentFiltered,
    "moderation_blocked": ContentFiltered,
    "invalid_param": InvalidRequest,
    "server_error": UpstreamError,
    "overloaded": Unavailable,
    "malformed": ProtocolError,
}

EDIT_ERRORS = {
    "missing_image": InvalidRequest,
    "unsupported_file_mimetype": InvalidRequest,
    "mask_size_mismatch": InvalidRequest,
    "content_policy_violation": ContentFiltered,
    "rate_limited": RateLimited,
}
"""The documented errors of /images/edits, armed like the others, and their classes."""


def gpt_image_usage(prompt: str, n: int) -> dict[str, Any]:
    """The ``usage`` object GPT image models add (complete, as the client's strict mode wants):
    a token per four prompt characters in, 272 tokens per low-quality square image out."""
    text = max(1, len(prompt) // 4)
    return {
        "input_tokens": text,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": text},
        "output_tokens": 272 * n,
        "total_tokens": text + 272 * n,
    }


def tiny_png(width: int = 64, height: int = 64, shade: int = 0, fmt: str = "PNG") -> bytes:
    """A small solid-colour image made with Pillow (PNG unless ``fmt`` says otherwise)."""
    return solid_png(width, height, (shade % 256, 90, 160), fmt)


@dataclass
class OpenAIFake:
    """The fake's state: what is armed, what it saw, how slow it is."""

    key: str | None = None
    delay_s: float = 0.0
    step_s: float = 0.015
    armed: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    edit_forms: list[tuple[dict[str, str], list[tuple[str, str, str, bytes]]]] = field(
        default_factory=list
    )
    files: dict[str, bytes] = field(default_factory=dict)
    model_calls: int = 0
    image_format: str = "PNG"
    files_base: str | None = None
    """Where ``url`` answers point (another fake's base URL); None = this fake."""
    store: dict[str, bytes] | None = None
    file_headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    """The most generations this fake was working on at the same moment."""
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def arm(self, name: str) -> None:
        """Answer the next generation with the documented error ``name``."""
        if name not in ERRORS and name != "malformed":
            raise KeyError(name)
        self.armed.append(name)

    def app(self) -> FastAPI:
        api = FastAPI()

        def refused(request: Request) -> JSONResponse | None:
            if self.key is not None and bearer_token(request.headers) != self.key:
                status, body = ERRORS["invalid_api_key"]
                return JSONResponse(body, status)
            return None

        @api.post("/v1/images/generations")
        async def generations(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
            if (denied := refused(request)) is not None:
                return denied
            if self.armed:
                name = self.armed.pop(0)
                if name == "malformed":
                    return JSONResponse({"created": int(time.time()), "data": "nope"})
                status, error = ERRORS[name]
                headers = {"retry-after": "1"} if status == 429 else {}
                return JSONResponse(error, status, headers=headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s + self.step_s * int(body.get("steps") or 0))
            finally:
                self.in_flight -= 1
            width, height = (int(v) for v in str(body.get("size") or "64x64").split("x"))
            data = []
            for i in range(int(body.get("n") or 1)):
                image = tiny_png(width, height, shade=i, fmt=self.image_format)
                if body.get("response_format") == "url":
                    name = f"img-{next(self._ids)}.png"
                    (self.store if self.store is not None else self.files)[name] = image
                    base = self.files_base or str(request.base_url).rstrip("/")
                    data.append({"url": f"{base}/files/{name}"})
                else:
                    data.append({"b64_json": base64.b64encode(image).decode()})
            answer: dict[str, Any] = {"created": int(time.time()), "data": data}
            if str(body.get("model") or "").startswith("gpt-image"):
                answer["usage"] = gpt_image_usage(str(body["prompt"]), len(data))
            return JSONResponse(answer)

        @api.post("/v1/images/edits")
        async def edits(request: Request) -> Response:
            return await self._edit(request, variation=False)

        @api.post("/v1/images/variations")
        async def variations(request: Request) -> Response:
            return await self._edit(request, variation=True)

        @api.get("/files/{name}")
        async def files(name: str, request: Request) -> Response:
            self.file_headers.append(dict(request.headers))
            if name not in self.files:
                return JSONResponse({"error": {"message": "expired"}}, 404)
            return Response(self.files[name], media_type="image/png")

        @api.get("/v1/models")
        async def models(request: Request) -> Response:
            self.model_calls += 1
            if (denied := refused(request)) is not None:
                return denied
            cards = [
                {"id": m, "object": "model", "created": 0, "owned_by": "system"}
                for m in ("dall-e-2", "dall-e-3", "gpt-image-1")
            ]
            return JSONResponse({"object": "list", "data": cards})

        return api

    async def _edit(self, request: Request, *, variation: bool) -> Response:
        """One edit or variation: the multipart checks, then the painted images."""
        async with request.form() as form:
            fields = {k: str(v) for k, v in form.multi_items() if isinstance(v, str)}
            parts = [
                (k, v.filename or "", v.content_type or "", await v.read())
                for k, v in form.multi_items()
                if not isinstance(v, str)
            ]
        self.edit_forms.append((fields, parts))
        if bearer_token(request.headers) != (self.key or bearer_token(request.headers)):
            return JSONResponse(ERRORS["invalid_api_key"][1], 401)
        name = self.armed.pop(0) if self.armed else None
        if name is not None:
            status, error = ERRORS[name]
            return JSONResponse(
                error, status, headers={"retry-after": "1"} if status == 429 else {}
            )
        wanted = ("image",) if variation else ("image", "image[]")
        images = [p for p in parts if p[0] in wanted]
        if not images:
            return JSONResponse(*_swap(ERRORS["missing_image"]))
        if not variation and not fields.get("prompt"):
            missing = _error(400, "Missing required parameter: 'prompt'.", "invalid_request_error",
                             "missing_required_parameter", "prompt")  # fmt: skip
            return JSONResponse(*_swap(missing))
        if any(p[2] not in ("image/png", "image/jpeg", "image/webp") for p in parts):
            return JSONResponse(*_swap(ERRORS["unsupported_file_mimetype"]))
        first = _open(images[0][3])
        if variation and (first.format != "PNG" or first.width != first.height):
            return JSONResponse(*_swap(ERRORS["not_square_png"]))
        masks = [p for p in parts if p[0] == "mask"]
        mask = _open(masks[0][3]) if masks else None
        if mask is not None and (
            mask.format != "PNG" or "A" not in mask.getbands() or mask.size != first.size
        ):
            return JSONResponse(*_swap(ERRORS["mask_size_mismatch"]))
        width, height = (
            int(v) for v in fields.get("size", f"{first.width}x{first.height}").split("x")
        )
        await asyncio.sleep(self.delay_s + self.step_s * int(fields.get("steps") or 0))
        data = []
        for i in range(int(fields.get("n") or 1)):
            png = _paint(first, mask, (width, height), shade=i)
            data.append({"b64_json": base64.b64encode(png).decode()})
        return JSONResponse({"created": int(time.time()), "data": data})


def _swap(error: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """(body, status) for JSONResponse from an ERRORS entry."""
    return error[1], error[0]


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _paint(
    image: Image.Image, mask: Image.Image | None, size: tuple[int, int], shade: int
) -> bytes:
    """``image`` with the mask's fully transparent pixels (or all of it) painted, at ``size``."""
    base = image.convert("RGB")
    paint = Image.new("RGB", base.size, (shade % 256, 250, 10))
    if mask is None:
        base = paint
    else:
        edit = mask.getchannel("A").point(lambda a: 255 if a == 0 else 0)
        base.paste(paint, (0, 0), edit)
    out = io.BytesIO()
    base.resize(size).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def openai_provider(url: str, name: str = "oai", **cfg: Any) -> OpenAIProvider:
    """An openai provider for ``url`` (its ``/v1`` base) reading its key from the canary."""
    settings: dict[str, Any] = {"url": url, "api_key_env": CANARY_ENV, **cfg}
    return OpenAIProvider(name, OpenAIConfig(**settings))


@case("openai")
def openai_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The fake with the canary as its key; extensions on, so seeds and steps reach it."""
    from conformance import CANARY

    fake = OpenAIFake(key=CANARY)
    base = stack.enter_context(serve_app(fake.app()))

    def at(url: str) -> OpenAIProvider:
        return openai_provider(f"{url}/v1", extensions=True, tls_timeout_s=0.5)

    return Setup(
        provider=at(base),
        arm=fake.arm,
        errors=MAPPED,
        at_url=at,
        tls_timeout_s=0.5,
        edit_errors=EDIT_ERRORS,
        extra={"fake": fake},
    )
