"""Novita's v3 async image API as a loopback fake, and the novita conformance case.

Reuse it in any test (the tests folder is on ``sys.path``)::

    from vendor_novita import NovitaFake

    with NovitaFake() as fake:                 # two servers: the API, and the "S3" image host
        config = {"type": "novita", "url": fake.url, "api_key_env": "NOVITA_API_KEY",
                  "poll_interval_s": 0.01}
        fake.arm("rate_limit_exceeded")        # the next submit answers 429 (see ERRORS)
        fake.arm("task_failed", times=2)       # the next two tasks end TASK_STATUS_FAILED
        fake.counts                            # {"submit": 1, "poll": 3, "download": 1, ...}
        fake.submitted                         # the JSON body of every accepted txt2img call
        fake.reset()                           # knobs, counts and armed errors as at start

or the ``novita_fake`` fixture (``from vendor_novita import novita_fake``), which yields a
started ``NovitaFake()``.

What it follows (providers.md section 3): ``POST /v3/async/txt2img`` (Bearer key, JSON body
``{"extra", "request"}`` validated against the documented ranges) answers ``{"task_id"}``;
``GET /v3/async/task-result?task_id=`` moves QUEUED -> PROCESSING (``progress_percent``) ->
SUCCEED after ``steps * step_s`` seconds, with ``extra.seed`` as a string and presigned PNG
URLs on a second server that refuses an ``Authorization`` header as S3 does; ``GET /v3/model``
lists checkpoints. Errors use Novita's body ``{"code", "reason", "message", "metadata"}``.

Edits (providers.md section 13.5): ``POST /v3/async/img2img`` wants ``image_base64`` (plain
base64 of an image; a ``data:`` prefix or anything undecodable is 400 INVALID_REQUEST_BODY
naming the field) besides txt2img's fields, ``strength`` in 0-1; ``POST /v3/async/inpainting``
wants ``image_base64``, ``mask_image_base64`` of the same resolution, an inpainting checkpoint
(``inpaint_models``) and no width/height (the output has the image's size). The wording of
these 400 messages is not quoted in any source read (unverified; the body shape is the
documented one). A finished edit's image is the input with the mask's white (for img2img:
all of it) painted in the seed's colour. ``edits`` keeps each accepted edit body.

Knobs: ``key`` (the only Bearer key accepted; None = any non-empty one), ``step_s`` (seconds
per sampling step, default 0.01), ``min_side`` (128 as documented; the conformance case lowers
it to 64 because the shared suite asks for 64x64), ``models`` (the checkpoint list),
``fail_reason`` (the ``task.reason`` of a failed task), ``reported_seed`` (the seed the fake
uses and reports whatever was sent, as Novita does for -1).
"""

from __future__ import annotations

import base64
import binascii
import io
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from conformance import CANARY_ENV, Setup, case
from fakekit import Armed, bearer_token, solid_png
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faults import serve_app
from PIL import Image, UnidentifiedImageError

from imagegate.errors import (
    AuthError,
    ContentFiltered,
    InvalidRequest,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from imagegate.providers.base import Provider
from imagegate.providers.novita import SAMPLERS, NovitaConfig, NovitaProvider

__all__ = ["ERRORS", "NovitaFake", "novita_fake", "tiny_png"]

ERRORS: dict[str, tuple[int, str, str]] = {
    "unauthorized": (401, "FAILED_TO_AUTH", "authentication failed"),
    "missing_api_key": (400, "MISSING_API_KEY", "API Key not provided"),
    "invalid_api_key": (403, "INVALID_API_KEY", "invalid api-key"),
    "api_not_allowed": (403, "API_NOT_ALLOWED", "No permission to use this API"),
    "need_real_name_verify": (403, "NEED_REAL_NAME_VERIFY", "Enterprise verification not done"),
    "balance_not_enough": (400, "BILLING_BALANCE_NOT_ENOUGH", "Insufficient balance"),
    "not_enough_balance": (403, "NOT_ENOUGH_BALANCE", "Insufficient balance"),
    "illegal_prompt": (400, "ILLEGAL_PROMPT", "Prompt contains inappropriate content"),
    "invalid_request_body": (400, "INVALID_REQUEST_BODY", "request.steps: must be in [1, 100]"),
    "rate_limit_exceeded": (429, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded"),
    "service_unavailable": (503, "SERVICE_NOT_AVAILABLE", "Service unavailable"),
    "gateway_timeout": (504, "GATEWAY_TIMEOUT", "upstream request timeout"),
    "create_task_failed": (500, "CREATE_TASK_FAILED", "Failed to create task"),
}
"""The documented HTTP errors the fake answers a submit with once armed: status, reason, text.

Besides these, ``task_failed`` makes the next task end TASK_STATUS_FAILED (``fail_reason``),
and ``get_result_failed`` makes the next poll answer 500 GET_RESULT_FAILED."""

EXPECTED: dict[str, type[ProviderError]] = {
    "unauthorized": AuthError,
    "missing_api_key": AuthError,
    "invalid_api_key": AuthError,
    "api_not_allowed": AuthError,
    "need_real_name_verify": AuthError,
    "balance_not_enough": QuotaExceeded,
    "not_enough_balance": QuotaExceeded,
    "illegal_prompt": ContentFiltered,
    "invalid_request_body": InvalidRequest,
    "rate_limit_exceeded": RateLimited,
    "service_unavailable": Unavailable,
    "gateway_timeout": Unavailable,
    "create_task_failed": UpstreamError,
    "task_failed": UpstreamError,
}
"""What each armed error must become in the error tree."""

_DEFAULT_MODELS = ("sd_xl_base_1.0.safetensors", "dreamshaper_8_93211.safetensors")


def tiny_png(width: int, height: int, seed: int) -> bytes:
    """A solid PNG whose colour follows ``seed``: quick to make, distinct per seed."""
    return solid_png(width, height, (seed % 251, (seed // 251) % 241, (seed // 60491) % 239))


def _error(status: int, reason: str, message: str) -> JSONResponse:
    body = {"code": status, "reason": reason, "message": message, "metadata": {}}
    return JSONResponse(body, status_code=status)


class NovitaFake:
    """The API and its image host on 127.0.0.1; a context manager yielding itself."""

    def __init__(
        self,
        *,
        key: str | None = None,
        step_s: float = 0.01,
        min_side: int = 128,
        models: tuple[str, ...] = _DEFAULT_MODELS,
        fail_reason: str = "internal error: the worker crashed",
        reported_seed: int | None = None,
    ) -> None:
        self.key = key
        self.step_s = step_s
        self.min_side = min_side
        self.models = models
        self.fail_reason = fail_reason
        self.reported_seed = reported_seed
        self.url = ""
        self.images_url = ""
        self.counts = {"submit": 0, "poll": 0, "download": 0, "models": 0}
        self.submitted: list[dict[str, Any]] = []
        self.edits: list[dict[str, Any]] = []
        self.inpaint_models = ("realisticVisionV40_v40VAE-inpainting_81543.safetensors",)
        self.download_headers: list[dict[str, str]] = []
        self._armed = Armed("Novita", {*EXPECTED, *EDIT_ERRORS, "get_result_failed"})
        self._tasks: dict[str, dict[str, Any]] = {}
        self._images: dict[str, bytes] = {}
        self._stack = ExitStack()
        self._knobs = (step_s, min_side, models, fail_reason, reported_seed)

    # -- control -------------------------------------------------------------------------

    def arm(self, name: str, times: int = 1) -> None:
        """Answer the next ``times`` matching calls with the error ``name``."""
        self._armed.arm(name, times)

    def disarm(self) -> None:
        """Forget every armed error."""
        self._armed.clear()

    def reset(self) -> None:
        """Back to the state after start: knobs as constructed, no counts, nothing armed."""
        self.step_s, self.min_side, self.models, self.fail_reason, self.reported_seed = self._knobs
        self._armed.clear()
        self.counts = dict.fromkeys(self.counts, 0)
        self.submitted.clear()
        self.download_headers.clear()

    def __enter__(self) -> NovitaFake:
        self.images_url = self._stack.enter_context(serve_app(self._image_app()))
        self.url = self._stack.enter_context(serve_app(self._api_app()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # -- the API -------------------------------------------------------------------------

    def _auth(self, request: Request) -> JSONResponse | None:
        token = bearer_token(request.headers)
        if not token.strip():
            return _error(*ERRORS["unauthorized"])
        if self.key is not None and token != self.key:
            return _error(*ERRORS["invalid_api_key"])
        return None

    def _validate(self, body: Any) -> str | None:
        """Novita's documented limits; the complaint, or None when the body is fine."""
        req = body.get("request") if isinstance(body, dict) else None
        if not isinstance(req, dict):
            return "request: is required"
        for name in ("model_name", "prompt", "width", "height", "image_num", "steps"):
            if name not in req:
                return f"request.{name}: is required"
        side = f"must be in [{self.min_side}, 2048]"
        checks = [
            ("model_name", req["model_name"] in self.models, "model not exist"),
            ("prompt", 1 <= len(str(req["prompt"])) <= 1024, "length must be in [1, 1024]"),
            ("width", self.min_side <= req["width"] <= 2048, side),
            ("height", self.min_side <= req["height"] <= 2048, side),
            ("image_num", 1 <= req["image_num"] <= 8, "must be in [1, 8]"),
            ("steps", 1 <= req["steps"] <= 100, "must be in [1, 100]"),
            ("guidance_scale", 1 <= req.get("guidance_scale", 0) <= 30, "must be in [1, 30]"),
            ("sampler_name", req.get("sampler_name") in SAMPLERS, "sampler not exist"),
            ("seed", int(req.get("seed", -1)) >= -1, "minimum is -1"),
        ]  # fmt: skip
        for name, ok, why in checks:
            if not ok:
                return f"request.{name}: {why}"
        return None

    def _api_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v3/async/txt2img")
        async def txt2img(request: Request) -> Response:
            self.counts["submit"] += 1
            denied = self._auth(request)
            if denied is not None:
                return denied
            armed = self._armed.take(*ERRORS)
            if armed is not None:
                return _error(*ERRORS[armed])
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "INVALID_REQUEST_BODY", "request body is not JSON")
            problem = self._validate(body)
            if problem is not None:
                return _error(400, "INVALID_REQUEST_BODY", problem)
            self.submitted.append(body)
            req = body["request"]
            seed = int(req.get("seed", -1))
            task_id = str(uuid.uuid4())
            self._tasks[task_id] = {
                "started": time.monotonic(),
                "duration": req["steps"] * self.step_s,
                "seed": self._seed(seed),
                "width": req["width"],
                "height": req["height"],
                "image_num": req["image_num"],
                "nsfw": bool(body.get("extra", {}).get("enable_nsfw_detection")),
                "failed": self._armed.take("task_failed") is not None,
            }
            return JSONResponse({"task_id": task_id})

        @app.post("/v3/async/img2img")
        async def img2img(request: Request) -> Response:
            return await self._edit(request, "IMG_TO_IMG")

        @app.post("/v3/async/inpainting")
        async def inpainting(request: Request) -> Response:
            return await self._edit(request, "INPAINTING")

        @app.get("/v3/async/task-result")
        async def task_result(request: Request, task_id: str = "") -> Response:
            self.counts["poll"] += 1
            denied = self._auth(request)
            if denied is not None:
                return denied
            if self._armed.take("get_result_failed"):
                return _error(500, "GET_RESULT_FAILED", "Failed to get task result")
            task = self._tasks.get(task_id)
            if task is None:
                return _error(404, "TASK_NOT_FOUND", "Task not found")
            return JSONResponse(self._result(task_id, task))

        @app.get("/v3/model")
        async def models(request: Request) -> Response:
            self.counts["models"] += 1
            denied = self._auth(request)
            if denied is not None:
                return denied
            query = request.query_params.get("filter.query", "")
            found = [
                {"id": i, "name": name, "sd_name": name, "sd_name_in_api": name, "status": 1,
                 "type": {"name": "checkpoint", "display_name": "Checkpoint"}}
                for i, name in enumerate(self.models)
                if query.lower() in name.lower()
            ]  # fmt: skip
            return JSONResponse({"models": found, "pagination": {"next_cursor": ""}})

        return app

    async def _edit(self, request: Request, kind: str) -> Response:
        """An img2img or inpainting submit: Novita's checks, then a task like txt2img's."""
        self.counts["submit"] += 1
        denied = self._auth(request)
        if denied is not None:
            return denied
        armed = self._armed.take(*ERRORS, *EDIT_ONLY)
        if armed is not None:
            return _error(*{**ERRORS, **EDIT_ONLY}[armed])
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "INVALID_REQUEST_BODY", "request body is not JSON")
        req = body.get("request") if isinstance(body, dict) else None
        if not isinstance(req, dict):
            return _error(400, "INVALID_REQUEST_BODY", "request: is required")
        inpaint = kind == "INPAINTING"
        if inpaint:
            req = {**req, "width": 0, "height": 0}  # no size fields: the image's size is used
        problem = _edit_problem(req, inpaint, self.inpaint_models)
        if problem is None and not inpaint:
            problem = self._validate({"request": req})
        if problem is not None:
            return _error(400, "INVALID_REQUEST_BODY", problem)
        self.edits.append(body)
        image = _b64_image(req["image_base64"])
        mask = _b64_image(req["mask_image_base64"]) if inpaint else None
        width, height = (image.width, image.height) if inpaint else (req["width"], req["height"])
        task_id = str(uuid.uuid4())
        self._tasks[task_id] = {
            "started": time.monotonic(),
            "duration": req["steps"] * self.step_s,
            "seed": self._seed(int(req.get("seed", -1))),
            "width": width,
            "height": height,
            "image_num": req["image_num"],
            "nsfw": False,
            "failed": self._armed.take("task_failed") is not None,
            "task_type": kind,
            "render": lambda seed: _repaint(image, mask, (width, height), seed),
        }
        return JSONResponse({"task_id": task_id})

    def _seed(self, sent: int) -> int:
        if self.reported_seed is not None:
            return self.reported_seed
        return sent if sent >= 0 else random.randint(0, 2**32 - 1)

    def _result(self, task_id: str, task: dict[str, Any]) -> dict[str, Any]:
        elapsed = time.monotonic() - task["started"]
        done = elapsed >= task["duration"]
        status, percent, reason = "TASK_STATUS_PROCESSING", 0, ""
        if task["failed"] and done:
            status, reason = "TASK_STATUS_FAILED", self.fail_reason
        elif done:
            status = "TASK_STATUS_SUCCEED"
        elif elapsed < task["duration"] / 10:
            status = "TASK_STATUS_QUEUED"
        else:
            percent = int(100 * elapsed / task["duration"])
        images: list[dict[str, Any]] = []
        if status == "TASK_STATUS_SUCCEED":
            for i in range(task["image_num"]):
                name = f"prod/{task_id}/{i}.png"
                if name not in self._images:
                    seed = task["seed"] + i
                    render = task.get("render")
                    self._images[name] = (
                        render(seed) if render else tiny_png(task["width"], task["height"], seed)
                    )
                url = (
                    f"{self.images_url}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                    f"&X-Amz-Expires=3600&X-Amz-Signature={uuid.uuid4().hex}"
                )
                result = {"valid": True, "confidence": 0.01} if task["nsfw"] else {}
                images.append(
                    {"image_url": url, "image_url_ttl": 3600, "image_type": "png",
                     "nsfw_detection_result": result}
                )  # fmt: skip
        return {
            "extra": {
                "seed": str(task["seed"]),
                "enable_nsfw_detection": task["nsfw"],
                "debug_info": {"request_info": "", "submit_time_ms": ""},
            },
            "task": {
                "task_id": task_id,
                "status": status,
                "reason": reason,
                "task_type": task.get("task_type", "TXT_TO_IMG"),
                "eta": 0,
                "progress_percent": percent,
            },
            "images": images,
            "videos": [],
            "audios": [],
        }

    # -- the image host ------------------------------------------------------------------

    def _image_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/prod/{task_id}/{file}")
        async def image(request: Request, task_id: str, file: str) -> Response:
            self.counts["download"] += 1
            self.download_headers.append(dict(request.headers))
            if "authorization" in request.headers:
                xml = (
                    "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                    "allowed</Message></Error>"
                )
                return Response(xml, status_code=400, media_type="application/xml")
            data = self._images.get(f"prod/{task_id}/{file}")
            if data is None or "X-Amz-Signature" not in request.query_params:
                return Response("<Error><Code>AccessDenied</Code></Error>", status_code=403)
            return Response(data, media_type="image/png")

        return app


EDIT_ONLY: dict[str, tuple[int, str, str]] = {
    "invalid_image": (400, "INVALID_REQUEST_BODY", "request.image_base64: invalid image"),
    "mask_size_mismatch": (
        400,
        "INVALID_REQUEST_BODY",
        "request.mask_image_base64: should have the same resolution as the original image",
    ),
    "not_inpainting_model": (
        400,
        "INVALID_REQUEST_BODY",
        "request.model_name: is not an inpainting model",
    ),
}
"""The edit endpoints' own 400s, armed like ERRORS (their wording is unverified)."""

EDIT_ERRORS: dict[str, type[ProviderError]] = {
    "invalid_image": InvalidRequest,
    "mask_size_mismatch": InvalidRequest,
    "not_inpainting_model": InvalidRequest,
    "illegal_prompt": ContentFiltered,
    "balance_not_enough": QuotaExceeded,
    "task_failed": UpstreamError,
}
"""The documented errors of the edit tasks, and their classes."""


def _b64_image(text: Any) -> Image.Image:
    """The image of a plain base64 string; ValueError (as Novita's 400) otherwise."""
    try:
        data = base64.b64decode(str(text), validate=True)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ValueError(str(exc)) from exc


def _edit_problem(
    req: dict[str, Any], inpaint: bool, inpaint_models: tuple[str, ...]
) -> str | None:
    """The edit fields' checks; the complaint, or None."""
    names = ("model_name", "image_base64", "prompt", "image_num", "steps")
    for name in (*names, "mask_image_base64") if inpaint else names:
        if name not in req:
            return f"request.{name}: is required"
    try:
        image = _b64_image(req["image_base64"])
        mask = _b64_image(req["mask_image_base64"]) if inpaint else None
    except ValueError:
        return EDIT_ONLY["invalid_image"][2]
    if mask is not None and mask.size != image.size:
        return EDIT_ONLY["mask_size_mismatch"][2]
    if inpaint and req["model_name"] not in inpaint_models:
        return EDIT_ONLY["not_inpainting_model"][2]
    if not 0 <= float(req.get("strength", 0.5)) <= 1:
        return "request.strength: must be in [0, 1]"
    return None


def _repaint(
    image: Image.Image, mask: Image.Image | None, size: tuple[int, int], seed: int
) -> bytes:
    """The input at ``size`` with the mask's white (or all of it) in the seed's colour."""
    base = image.convert("RGB").resize(size)
    paint = Image.new("RGB", size, (seed % 251, 210, 50))
    where = mask.convert("L").resize(size) if mask is not None else Image.new("L", size, 255)
    base.paste(paint, (0, 0), where)
    out = io.BytesIO()
    base.save(out, format="PNG", compress_level=1)
    return out.getvalue()


@pytest.fixture
def novita_fake() -> Iterator[NovitaFake]:
    """A started NovitaFake accepting any key; see the module docstring."""
    with NovitaFake() as fake:
        yield fake


@case("novita")
def novita_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The v3 API fake; 64x64 allowed because the shared suite asks for it."""
    fake = stack.enter_context(NovitaFake(min_side=64))

    def build(url: str) -> Provider:
        config = NovitaConfig(
            url=url, api_key_env=CANARY_ENV, poll_interval_s=0.01, tls_timeout_s=0.5
        )
        return NovitaProvider("novita", config)

    return Setup(
        provider=build(fake.url),
        arm=fake.arm,
        errors=EXPECTED,
        at_url=build,
        tls_timeout_s=0.5,
        edit_errors=EDIT_ERRORS,
    )
