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
"""

from __future__ import annotations

import asyncio
import base64
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
        self.content_types: list[str] = []
        self._armed = Armed("Stability", EXPECTED)
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
            form = {k: str(v) for k, v in (await request.form()).items()}
            accept = request.headers.get("accept", "image/*")
            self.calls.append({"model": model, "form": form, "accept": accept})
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            armed = self._armed.take()
            if armed in ERRORS:
                return _error(*ERRORS[armed])
            if accept not in ("image/*", "application/json"):
                return _error(400, "bad_request", "accept: must be image/* or application/json")
            problem = self._validate(model, form)
            if problem is not None:
                return _error(400, "bad_request", problem)
            seed = int(form.get("seed", "0")) or random.randint(1, 4294967294)
            w, h = (int(x) * 32 for x in form.get("aspect_ratio", "1:1").split(":"))
            png = tiny_png(w, h, seed)
            finish = "CONTENT_FILTERED" if armed == "content_filtered" else "SUCCESS"
            if accept == "application/json":
                body = {"image": base64.b64encode(png).decode(), "finish_reason": finish,
                        "seed": seed}  # fmt: skip
                return JSONResponse(body, media_type="application/json; type=image/png")
            headers = {"seed": str(seed), "finish-reason": finish, "x-request-id": uuid.uuid4().hex}
            return Response(png, media_type="image/png", headers=headers)

        @app.get("/v1/user/balance")
        async def balance(request: Request) -> Response:
            denied = self._auth(request)
            return denied or JSONResponse({"credits": self.credits})

        return app


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
    )
