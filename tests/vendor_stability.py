"""Stability's v2beta Stable Image API as a loopback fake, and the stability conformance case.

Reuse it in any test (the tests folder is on ``sys.path``)::

    from vendor_stability import StabilityFake

    with StabilityFake() as fake:
        config = {"type": "stability", "url": fake.url, "api_key_env": "STABILITY_API_KEY"}
        fake.arm("content_moderation")        # the next generate answers 403 (see ERRORS)
        fake.calls                            # each generate call: model, form fields, accept
        fake.delay_s = 5.0                    # hold each generate call this long

What it follows (providers.md section 4): ``POST /v2beta/stable-image/generate/{core|ultra|
sd3}`` with a Bearer key, multipart only, fields validated against the documented ranges;
``Accept: image/*`` answers PNG bytes with ``seed`` and ``finish-reason`` headers,
``Accept: application/json`` answers ``{"image", "finish_reason", "seed"}``; errors are
``{"id", "name", "errors": [str]}``; ``GET /v1/user/balance`` answers ``{"credits"}``. The PNG
is small: 32 pixels per unit of the aspect ratio (1:1 -> 32x32, 16:9 -> 512x288).

Edits (providers.md section 13.4): ``generate/sd3`` with ``mode = image-to-image`` wants an
``image`` part and a ``strength`` in 0-1 (and no ``aspect_ratio``); ``generate/ultra`` with an
``image`` part wants ``strength``; ``POST /v2beta/stable-image/edit/inpaint`` wants ``image``
and ``prompt``, an optional ``mask`` (white = repaint; resized when its size differs, as
documented; without one the image's transparent pixels are the mask). Images must have every
side >= 64 px (inpaint: 4,096 to 9,437,184 pixels); a request over 10 MiB is 413
``payload_too_large``. Error texts follow the documented ``"field: why"`` form; their exact
words are not quoted in any source read (unverified). The answer is the input image with the
repainted area (the mask's white, or all of it for img2img) in the seed's colour, at the
input's size: Stability's own is about 4 MP, too slow for tests. ``uploads`` keeps each
call's file parts (name -> (filename, content type, bytes)).
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import uuid
from contextlib import ExitStack
from typing import Any

import pytest
from conformance import CANARY_ENV, Setup, case
from fakekit import Armed, bearer_token
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faults import serve_app
from PIL import Image, UnidentifiedImageError
from vendor_novita import tiny_png

from imagegate.errors import (
    AuthError,
    ContentFiltered,
    InvalidRequest,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    UpstreamError,
)
from imagegate.providers.base import Provider
from imagegate.providers.stability import (
    ASPECT_RATIOS,
    SD3_MODELS,
    StabilityConfig,
    StabilityProvider,
)

__all__ = ["ERRORS", "EXPECTED", "StabilityFake"]

ERRORS: dict[str, tuple[int, str, str]] = {
    "bad_request": (400, "bad_request", "aspect_ratio: must be one of " + ", ".join(ASPECT_RATIOS)),
    "unauthorized": (401, "unauthorized", "authorization: invalid or missing API key"),
    "payment_required": (402, "payment_required", "You lack sufficient credits"),
    "content_moderation": (403, "content_moderation", "Your request was flagged by our content "
                           "moderation system, as a result your request was denied"),
    "payload_too_large": (413, "payload_too_large", "body: request is larger than 10MiB"),
    "request_rejected": (422, "invalid_language", "prompt: English is the only supported language"),
    "rate_limit_exceeded": (429, "rate_limit_exceeded", "You have exceeded the rate limit of "
                            "150 requests within a 10 second period"),
    "internal_error": (500, "internal_error", "An unexpected server error has occurred"),
    "image_required": (400, "bad_request", "image: is required"),
    "image_too_small": (400, "bad_request", "image: every side must be at least 64 pixels"),
}  # fmt: skip
"""The documented HTTP errors the fake answers a generate call with once armed.

Besides these, ``content_filtered`` makes the next call succeed with ``finish_reason``
CONTENT_FILTERED (the image generated, then flagged)."""

EXPECTED: dict[str, type[ProviderError]] = {
    "bad_request": InvalidRequest,
    "unauthorized": AuthError,
    "payment_required": QuotaExceeded,
    "content_moderation": ContentFiltered,
    "payload_too_large": InvalidRequest,
    "request_rejected": InvalidRequest,
    "rate_limit_exceeded": RateLimited,
    "internal_error": UpstreamError,
    "content_filtered": ContentFiltered,
}
"""What each armed error must become in the error tree."""

EDIT_ERRORS: dict[str, type[ProviderError]] = {
    "image_required": InvalidRequest,
    "image_too_small": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "content_moderation": ContentFiltered,
    "content_filtered": ContentFiltered,
}
"""The documented errors of the edit calls, armed like the others, and their classes."""

_PRESETS = (
    "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance",
    "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk",
    "origami", "photographic", "pixel-art", "tile-texture",
)  # fmt: skip


def _error(status: int, name: str, *errors: str) -> JSONResponse:
    body = {"id": uuid.uuid4().hex, "name": name, "errors": list(errors)}
    return JSONResponse(body, status_code=status)


class StabilityFake:
    """The API on 127.0.0.1; a context manager yielding itself."""

    def __init__(self, *, key: str | None = None, credits: float = 25.5) -> None:
        self.key = key
        self.credits = credits
        self.delay_s = 0.0
        self.url = ""
        self.calls: list[dict[str, Any]] = []
        self.uploads: list[dict[str, tuple[str, str, bytes]]] = []
        self.content_types: list[str] = []
        self._armed = Armed("Stability", {**EXPECTED, **EDIT_ERRORS})
        self._stack = ExitStack()

    def arm(self, name: str, times: int = 1) -> None:
        """Answer the next ``times`` generate calls with the error ``name``."""
        self._armed.arm(name, times)

    def __enter__(self) -> StabilityFake:
        self.url = self._stack.enter_context(serve_app(self._app()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _auth(self, request: Request) -> JSONResponse | None:
        token = bearer_token(request.headers)
        if not token or (self.key is not None and token != self.key):
            return _error(*ERRORS["unauthorized"])
        return None

    def _validate(self, model: str, form: dict[str, str]) -> str | None:
        """Stability's documented limits; the complaint, or None when the form is fine."""
        formats = ("png", "jpeg") if model == "sd3" else ("png", "jpeg", "webp")
        seed = form.get("seed", "0")
        checks = [
            ("prompt", 1 <= len(form.get("prompt", "")) <= 10000, "must be 1 to 10000 characters"),
            ("negative_prompt", len(form.get("negative_prompt", "")) <= 10000, "too long"),
            ("aspect_ratio", form.get("aspect_ratio", "1:1") in ASPECT_RATIOS,
             "must be one of " + ", ".join(ASPECT_RATIOS)),
            ("seed", seed.isdigit() and int(seed) <= 4294967294, "must be 0 to 4294967294"),
            ("output_format", form.get("output_format", "png") in formats,
             "must be one of " + ", ".join(formats)),
            ("style_preset", form.get("style_preset", "enhance") in _PRESETS, "unknown preset"),
        ]  # fmt: skip
        if model == "sd3":
            cfg = float(form.get("cfg_scale", "4"))
            checks += [
                ("model", form.get("model", "sd3.5-large") in SD3_MODELS, "unknown model"),
                ("cfg_scale", 1 <= cfg <= 10, "must be between 1 and 10"),
            ]
        for name, ok, why in checks:
            if not ok:
                return f"{name}: {why}"
        return None

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v2beta/stable-image/generate/{model}")
        async def generate(request: Request, model: str) -> Response:
            self.content_types.append(request.headers.get("content-type", ""))
            denied = self._auth(request)
            if denied is not None:
                return denied
            if model not in ("core", "ultra", "sd3"):
                return _error(404, "not_found", f"model: no endpoint {model!r}")
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                return _error(400, "bad_request", "content-type: must be multipart/form-data")
            if int(request.headers.get("content-length") or 0) > MAX_BODY:
                return _error(*ERRORS["payload_too_large"])
            form, uploads = await _read_form(request)
            accept = request.headers.get("accept", "image/*")
            self.calls.append({"model": model, "form": form, "accept": accept})
            self.uploads.append(uploads)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            armed = self._armed.take()
            if armed in ERRORS:
                return _error(*ERRORS[armed])
            if accept not in ("image/*", "application/json"):
                return _error(400, "bad_request", "accept: must be image/* or application/json")
            problem = self._validate(model, form) or _edit_problem(model, form, uploads)
            if problem is not None:
                return _error(400, "bad_request", problem)
            seed = int(form.get("seed", "0")) or random.randint(1, 4294967294)
            if "image" in uploads:
                png = _repaint(uploads["image"][2], None, seed)
            else:
                w, h = (int(x) * 32 for x in form.get("aspect_ratio", "1:1").split(":"))
                png = tiny_png(w, h, seed)
            return _answer(png, seed, accept, armed)

        @app.post("/v2beta/stable-image/edit/inpaint")
        async def inpaint(request: Request) -> Response:
            self.content_types.append(request.headers.get("content-type", ""))
            denied = self._auth(request)
            if denied is not None:
                return denied
            if int(request.headers.get("content-length") or 0) > MAX_BODY:
                return _error(*ERRORS["payload_too_large"])
            form, uploads = await _read_form(request)
            accept = request.headers.get("accept", "image/*")
            self.calls.append({"model": "inpaint", "form": form, "accept": accept})
            self.uploads.append(uploads)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            armed = self._armed.take()
            if armed in ERRORS:
                return _error(*ERRORS[armed])
            problem = _inpaint_problem(form, uploads)
            if problem is not None:
                return _error(400, "bad_request", problem)
            seed = int(form.get("seed", "0")) or random.randint(1, 4294967294)
            mask = uploads["mask"][2] if "mask" in uploads else None
            return _answer(_repaint(uploads["image"][2], mask, seed), seed, accept, armed)

        @app.get("/v1/user/balance")
        async def balance(request: Request) -> Response:
            denied = self._auth(request)
            return denied or JSONResponse({"credits": self.credits})

        return app


MAX_BODY = 10 * 1024 * 1024  # "payloads cannot be larger than 10MiB in size"


async def _read_form(request: Request) -> tuple[dict[str, str], dict[str, tuple[str, str, bytes]]]:
    """The multipart fields, and the file parts as name -> (filename, content type, bytes)."""
    fields: dict[str, str] = {}
    uploads: dict[str, tuple[str, str, bytes]] = {}
    async with request.form() as form:
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
            else:
                uploads[key] = (value.filename or "", value.content_type or "", await value.read())
    return fields, uploads


def _image_problem(
    uploads: dict[str, tuple[str, str, bytes]], pixels: tuple[int, int] | None = None
) -> str | None:
    if "image" not in uploads:
        return ERRORS["image_required"][2]
    try:
        with Image.open(io.BytesIO(uploads["image"][2])) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError):
        return "image: must be a jpeg, png or webp image"
    if min(width, height) < 64:
        return ERRORS["image_too_small"][2]
    if pixels is not None and not pixels[0] <= width * height <= pixels[1]:
        return f"image: must have between {pixels[0]} and {pixels[1]} pixels"
    return None


def _edit_problem(
    model: str, form: dict[str, str], uploads: dict[str, tuple[str, str, bytes]]
) -> str | None:
    """The img2img checks of generate/sd3 (mode image-to-image) and generate/ultra."""
    img2img = form.get("mode") == "image-to-image" or (model == "ultra" and "image" in uploads)
    if not img2img:
        return None
    if model == "sd3" and "aspect_ratio" in form:
        return "aspect_ratio: is not allowed with mode image-to-image"
    problem = _image_problem(uploads)
    if problem is None and not 0 <= float(form.get("strength", "-1")) <= 1:
        problem = "strength: is required with an image and must be between 0 and 1"
    return problem


def _inpaint_problem(
    form: dict[str, str], uploads: dict[str, tuple[str, str, bytes]]
) -> str | None:
    if not 1 <= len(form.get("prompt", "")) <= 10000:
        return "prompt: must be 1 to 10000 characters"
    if form.get("output_format", "png") not in ("png", "jpeg", "webp"):
        return "output_format: must be one of png, jpeg, webp"
    return _image_problem(uploads, (4096, 9437184))


def _repaint(image: bytes, mask: bytes | None, seed: int) -> bytes:
    """The image with the mask's white (or, without a mask, its transparent pixels; for
    img2img all of it) painted in the seed's colour."""
    with Image.open(io.BytesIO(image)) as img:
        img.load()
        base = img.convert("RGB")
        alpha = img.getchannel("A") if "A" in img.getbands() else None
    paint = Image.new("RGB", base.size, (seed % 251, 230, 30))
    if mask is not None:
        with Image.open(io.BytesIO(mask)) as raw:
            where = raw.convert("L").resize(base.size)
    elif alpha is not None:
        where = alpha.point(lambda a: 255 - a)
    else:
        where = Image.new("L", base.size, 255)
    base.paste(paint, (0, 0), where)
    out = io.BytesIO()
    base.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _answer(png: bytes, seed: int, accept: str, armed: str | None) -> Response:
    """The image as Stability answers it: raw bytes and headers, or JSON."""
    finish = "CONTENT_FILTERED" if armed == "content_filtered" else "SUCCESS"
    if accept == "application/json":
        body = {"image": base64.b64encode(png).decode(), "finish_reason": finish, "seed": seed}
        return JSONResponse(body, media_type="application/json; type=image/png")
    headers = {"seed": str(seed), "finish-reason": finish, "x-request-id": uuid.uuid4().hex}
    return Response(png, media_type="image/png", headers=headers)


@case("stability")
def stability_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The v2beta fake, answering at once unless told to be slow.

    The API has no steps, so for the shared cancel check the fake holds each call for 5 s.
    """
    fake = stack.enter_context(StabilityFake())

    def slow() -> None:
        fake.delay_s = 5.0

    def build(url: str) -> Provider:
        config = StabilityConfig(url=url, api_key_env=CANARY_ENV, tls_timeout_s=0.5)
        return StabilityProvider("stability", config)

    return Setup(
        provider=build(fake.url),
        arm=fake.arm,
        errors=EXPECTED,
        at_url=build,
        tls_timeout_s=0.5,
        slow=slow,
        edit_errors=EDIT_ERRORS,
    )
