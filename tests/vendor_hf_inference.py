"""Hugging Face's hf-inference route and Hub model status as a loopback fake, and its case.

Reuse it in any test (the tests folder is on ``sys.path``)::

    from vendor_hf_inference import HFInferenceFake

    with HFInferenceFake() as fake:            # the router and the Hub on one server
        config = {"type": "hf-inference", "url": fake.url, "hub_url": fake.url,
                  "model": "owner/model", "token_env": "HF_TOKEN"}
        fake.arm("model_loading")              # the next call answers 503 (see ERRORS)
        fake.calls                             # (headers, JSON body) of every generate call
        fake.image_format = "JPEG"             # answer JPEG instead of PNG

What it follows (providers.md section 7): ``POST /models/{model}`` with ``{"inputs",
"parameters"}`` and a Bearer token answers the image's bytes (``width`` x ``height``, 64 when
not sent) after ``num_inference_steps * step_s`` seconds; errors are ``{"error": ...}`` with
the status, the legacy 503 carrying ``estimated_time``. ``GET /api/models/{model}`` (the
Hub, ``expand`` = inference, inferenceProviderMapping) answers the model's status.

``I2I_MODEL`` serves the ``image-to-image`` task (providers.md section 13.6): ``inputs`` must
be a plain base64 image (else 400 ``{"error": ...}``, wording unverified), ``parameters``
the task's (prompt, negative_prompt, num_inference_steps, guidance_scale, target_size) plus
the extra ``seed`` and ``strength`` the client passes through; the answer is the input at
``target_size`` (or its own size) tinted by the seed, ``strength`` being the tint's share.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from conformance import CANARY_ENV, Setup, case
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faults import serve_app
from PIL import Image, UnidentifiedImageError

from imagegate.errors import (
    AuthError,
    InvalidRequest,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from imagegate.providers.base import Provider
from imagegate.providers.hf_inference import HFInferenceConfig, HFInferenceProvider

__all__ = ["EDIT_ERRORS", "ERRORS", "EXPECTED", "I2I_MODEL", "MODEL", "HFInferenceFake", "hf_fake"]

MODEL = "owner/tiny-t2i"
I2I_MODEL = "owner/tiny-i2i"

ERRORS: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {
    "unauthorized": (401, {"error": "Invalid credentials in Authorization header"}, {}),
    "forbidden": (403, {"error": "This authentication method does not have permissions"}, {}),
    "out_of_credits": (
        402,
        {"error": "You have exceeded your monthly included credits for Inference Providers."},
        {},
    ),
    "rate_limited": (429, {"error": "Rate limit reached. Slow down."}, {"retry-after": "3"}),
    "bad_request": (400, {"error": "Input validation error: `inputs` must be non-empty"}, {}),
    "unprocessable": (422, {"error": "Input validation error: `width` must be <= 1024"}, {}),
    "not_found": (404, {"error": f"Model {MODEL} does not exist"}, {}),
    "model_loading": (
        503,
        {"error": f"Model {MODEL} is currently loading", "estimated_time": 12.5},
        {},
    ),
    "overloaded": (503, {"error": "Service Unavailable"}, {}),
    "server_error": (500, {"error": "Internal Server Error"}, {}),
    "bad_image": (400, {"error": "Input validation error: `inputs` is not a valid image"}, {}),
}
"""The documented errors the fake answers a call with once armed: status, body, headers."""

EXPECTED: dict[str, type[ProviderError]] = {
    "unauthorized": AuthError,
    "forbidden": AuthError,
    "out_of_credits": QuotaExceeded,
    "rate_limited": RateLimited,
    "bad_request": InvalidRequest,
    "unprocessable": InvalidRequest,
    "not_found": InvalidRequest,
    "model_loading": Unavailable,
    "overloaded": Unavailable,
    "server_error": UpstreamError,
}
"""What each armed error must become in the error tree."""

EDIT_ERRORS: dict[str, type[ProviderError]] = {
    "bad_image": InvalidRequest,
    "model_loading": Unavailable,
    "out_of_credits": QuotaExceeded,
}
"""The documented errors of the image-to-image task, and their classes."""


class HFInferenceFake:
    """The router's hf-inference route and the Hub's model API on 127.0.0.1."""

    def __init__(self, *, step_s: float = 0.025) -> None:
        self.step_s = step_s
        self.image_format = "PNG"
        self.json_instead = False  # answer 200 JSON instead of an image
        self.mapping: dict[str, Any] = {
            "hf-inference": {"status": "live", "providerId": MODEL, "task": "text-to-image"}
        }
        self.calls: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.paths: list[str] = []
        self.status_requests: list[tuple[dict[str, str], list[str]]] = []
        self.url = ""
        self._armed: list[str] = []
        self._lock = threading.Lock()
        self._stack = ExitStack()

    def arm(self, name: str) -> None:
        """Answer the next call with the documented error ``name``."""
        if name not in ERRORS:
            raise KeyError(f"unknown hf-inference error {name!r}; known: {sorted(ERRORS)}")
        with self._lock:
            self._armed.append(name)

    def _take(self) -> str | None:
        with self._lock:
            return self._armed.pop(0) if self._armed else None

    def __enter__(self) -> HFInferenceFake:
        self.url = self._stack.enter_context(serve_app(self._app()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/models/{model:path}")
        async def generate(model: str, request: Request) -> Response:
            self.paths.append(request.url.path)
            token = request.headers.get("authorization", "").removeprefix("Bearer ")
            if token == request.headers.get("authorization", "") or not token.strip():
                return JSONResponse({"error": "Invalid username or password."}, 401)
            armed = self._take()
            if armed is not None:
                status, body, headers = ERRORS[armed]
                return JSONResponse(body, status_code=status, headers=headers)
            body = await request.json()
            self.calls.append((dict(request.headers), body))
            params = body.get("parameters") or {}
            if not isinstance(body.get("inputs"), str) or not body["inputs"]:
                return JSONResponse({"error": "Input validation error: `inputs`"}, 400)
            if model == I2I_MODEL:
                return await self._image_to_image(body["inputs"], params)
            await asyncio.sleep(self.step_s * int(params.get("num_inference_steps", 2)))
            if self.json_instead:
                return JSONResponse({"generated_image": "not here"})
            size = (int(params.get("width", 64)), int(params.get("height", 64)))
            seed = int(params.get("seed", 0))
            out = io.BytesIO()
            Image.new("RGB", size, (seed % 251, 9, 9)).save(out, format=self.image_format)
            return Response(out.getvalue(), media_type=f"image/{self.image_format.lower()}")

        @app.get("/api/models/{model:path}")
        async def status(model: str, request: Request) -> Response:
            self.status_requests.append(
                (dict(request.headers), request.query_params.getlist("expand"))
            )
            if not request.headers.get("authorization", "").startswith("Bearer "):
                return JSONResponse({"error": "Invalid credentials"}, 401)
            if model != MODEL:
                return JSONResponse({"error": "Repository not found"}, 404)
            return JSONResponse(
                {"id": model, "inference": "warm", "inferenceProviderMapping": self.mapping}
            )

        return app

    async def _image_to_image(self, inputs: str, params: dict[str, Any]) -> Response:
        try:
            with Image.open(io.BytesIO(base64.b64decode(inputs, validate=True))) as img:
                image = img.convert("RGB")
        except (binascii.Error, UnidentifiedImageError, OSError):
            status, body, _ = ERRORS["bad_image"]
            return JSONResponse(body, status_code=status)
        await asyncio.sleep(self.step_s * int(params.get("num_inference_steps", 2)))
        size = params.get("target_size") or {"width": image.width, "height": image.height}
        seed = int(params.get("seed", 0))
        tint = Image.new("RGB", image.size, (seed % 251, 9, 9))
        out = io.BytesIO()
        Image.blend(image, tint, float(params.get("strength", 0.8))).resize(
            (int(size["width"]), int(size["height"]))
        ).save(out, format=self.image_format)
        return Response(out.getvalue(), media_type=f"image/{self.image_format.lower()}")


@pytest.fixture
def hf_fake() -> Iterator[HFInferenceFake]:
    """A started HFInferenceFake; see the module docstring."""
    with HFInferenceFake() as fake:
        yield fake


def provider_for(url: str, **settings: Any) -> HFInferenceProvider:
    """An hf-inference provider on ``url`` (router and Hub) reading the canary variable."""
    config = {
        "url": url,
        "hub_url": url,
        "model": MODEL,
        "token_env": CANARY_ENV,
        "tls_timeout_s": 0.5,
    } | settings
    return HFInferenceProvider("hf", HFInferenceConfig.model_validate(config))


@case("hf-inference")
def hf_inference_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The router fake: raw image bytes, the documented error bodies, the TLS stall."""
    fake = stack.enter_context(HFInferenceFake())

    def at_url(url: str) -> Provider:
        return provider_for(url)

    return Setup(
        provider=provider_for(fake.url, img2img_model=I2I_MODEL),
        arm=fake.arm,
        errors=EXPECTED,
        at_url=at_url,
        tls_timeout_s=0.5,
        edit_errors=EDIT_ERRORS,
    )
