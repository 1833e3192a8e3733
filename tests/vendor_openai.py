"""A loopback OpenAI images API, and the ``openai`` provider's conformance case.

``OpenAIFake`` answers ``POST /v1/images/generations`` with ``{"created", "data": [...]}``
(``b64_json``, or ``url`` links served from ``/files/``), ``GET /v1/models``, and, when armed,
each documented error in OpenAI's shape. It checks the Bearer key, and waits ``delay_s`` plus
``step_s`` per requested step (the ``steps`` extension) before answering, so a cancel has
something to cut short while a plain answer takes milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
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
        extra={"fake": fake},
    )
