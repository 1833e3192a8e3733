"""A loopback AUTOMATIC1111 1.10 API built from a real server's recorded answers
(tests/data/a1111-1.10.1), and the ``a1111`` provider's conformance case.

Every list route answers the recorded JSON. ``A1111Fake`` runs txt2img one at a time (like
A1111's queue lock), ``step_s`` per step, updating ``/sdapi/v1/progress`` as it goes;
``/sdapi/v1/interrupt`` ends the running job early and, as A1111 does, the interrupted job
still answers 200 with what it has. The answer is the recorded one with this request's values:
the 55 ``parameters`` keys and ``info`` as a JSON string with ``all_seeds`` seed + i, the model
and hash of the checkpoint that ran, and A1111's infotexts (``Schedule type``, ``Model hash``).

As A1111 1.10 does, an unknown sampler name runs the default sampler and an unknown
``sd_model_checkpoint`` runs the loaded checkpoint, both with 200. A checkpoint is listed with
its hash (``title`` "file [hash]") only once it has been loaded: fresh, only the loaded one has
it. With ``auth`` set, every route wants HTTP Basic. Armed errors answer the next txt2img with
A1111's documented error shapes (older versions' "Sampler not found" included).

``/sdapi/v1/img2img`` (providers.md section 13.2, A1111 v1.10.1 ``img2imgapi``): no
``init_images`` -> 404 ``Init image not found``, an undecodable image or mask -> 500
``Invalid encoded image`` (both in A1111's exception-handler shape ``{error, detail, body,
errors}``). It resizes the init image (and the mask) to ``width`` x ``height`` ("Just
resize") and paints the masked area (white, or opaque alpha for an RGBA mask) with the seed's
colour, so a test can see which pixels were repainted; without a mask the whole image is
tinted. ``edits`` keeps every img2img body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import io
import json
import random
import secrets
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conformance import CANARY, CANARY_ENV, Setup, case
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faults import serve_app
from PIL import Image, UnidentifiedImageError
from vendor_openai import tiny_png

from imagegate.errors import AuthError, InvalidRequest, Unavailable, UpstreamError
from imagegate.providers.a1111 import A1111Config, A1111Provider, checkpoint_matches

RECORDED = Path(__file__).parent / "data" / "a1111-1.10.1"
"""A real A1111 1.10.1's answers; README.md there names each request."""


def recorded(name: str) -> Any:
    """The recorded JSON answer ``name`` (e.g. "samplers")."""
    return json.loads((RECORDED / f"{name}.json").read_text(encoding="utf-8"))


MODELS: list[dict[str, Any]] = recorded("sd-models")
CHECKPOINTS = [m["model_name"] for m in MODELS]
SAMPLERS = [s["name"] for s in recorded("samplers")]
SCHEDULERS: list[dict[str, Any]] = recorded("schedulers")
_TEMPLATE = recorded("txt2img")
_LISTS = (
    "samplers", "schedulers", "upscalers", "sd-vae", "loras", "prompt-styles", "embeddings",
    "hypernetworks", "face-restorers", "realesrgan-models", "latent-upscale-modes", "scripts",
    "script-info", "memory", "cmd-flags",
)  # fmt: skip

ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "unauthorized": (401, {"detail": "Incorrect username or password."}),
    "no_api": (404, {"detail": "Not Found"}),
    "validation": (
        422,
        {
            "detail": [
                {
                    "loc": ["body", "cfg_scale"],
                    "msg": "value is not a valid float",
                    "type": "type_error.float",
                }
            ]
        },
    ),
    "sampler_not_found": (400, {"detail": "Sampler not found"}),
    "sampler_not_found_old": (404, {"detail": "Sampler not found"}),
    "init_image_not_found": (
        404,
        {
            "error": "HTTPException",
            "detail": "Init image not found",
            "body": "",
            "errors": "404: Init image not found",
        },
    ),
    "invalid_encoded_image": (
        500,
        {
            "error": "HTTPException",
            "detail": "Invalid encoded image",
            "body": "",
            "errors": "500: Invalid encoded image",
        },
    ),
    "server_error": (
        500,
        {
            "error": "OutOfMemoryError",
            "detail": "",
            "body": "",
            "errors": "CUDA out of memory. Tried to allocate 20.00 MiB",
        },
    ),
}
"""Each documented error: A1111's status and body."""

MAPPED = {
    "unauthorized": AuthError,
    "no_api": Unavailable,
    "validation": InvalidRequest,
    "sampler_not_found": InvalidRequest,
    "sampler_not_found_old": InvalidRequest,
    "server_error": UpstreamError,
}

EDIT_ERRORS = {
    "init_image_not_found": InvalidRequest,
    "invalid_encoded_image": InvalidRequest,
    "server_error": UpstreamError,
}
"""The documented errors of img2img, armed like the others, and their classes."""


def _schedule_label(sampler: str, scheduler: str | None) -> tuple[str, str]:
    """A1111 1.10's get_sampler_and_scheduler: a name's schedule suffix wins, an unknown
    sampler is the first one, an unknown scheduler Automatic."""
    found = next(
        (s for s in SCHEDULERS if scheduler in (s["name"], s["label"], *(s["aliases"] or []))),
        SCHEDULERS[0],
    )
    for s in SCHEDULERS:
        for option in (s["label"], s["name"], *(s["aliases"] or [])):
            if sampler.endswith(" " + option):
                found, sampler = s, sampler[: -len(option) - 1]
                break
    return (sampler if sampler in SAMPLERS else SAMPLERS[0]), found["label"]


@dataclass
class A1111Fake:
    """The fake's state: auth, timing, what is armed, what it saw, the running job."""

    auth: tuple[str, str] | None = None
    step_s: float = 0.02
    armed: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)
    interrupts: int = 0
    all_seeds: list[int] | None = None
    """Seeds to report instead of seed + i (as a variation-seed job would)."""
    inflight: int = 0
    max_inflight: int = 0
    step: int = 0
    steps: int = 0
    busy: bool = False
    loaded: str = CHECKPOINTS[0]
    """The model_name of the loaded checkpoint."""
    hashed: set[str] = field(default_factory=lambda: {CHECKPOINTS[0]})
    """The checkpoints whose hash A1111 has computed (it does on loading one)."""
    options: dict[str, Any] = field(default_factory=lambda: recorded("options"))
    _interrupted: bool = False
    _lock: asyncio.Lock | None = None
    _timestamp: str = "20261202175248"

    def arm(self, name: str) -> None:
        """Answer the next txt2img with the documented error ``name``."""
        if name not in ERRORS:
            raise KeyError(name)
        self.armed.append(name)

    def sd_models(self) -> list[dict[str, Any]]:
        """The checkpoints as /sd-models lists them now: hashed once loaded."""
        listed = []
        for model in MODELS:
            entry = dict(model)
            if model["model_name"] not in self.hashed:
                entry.update(title=model["title"].split(" [", 1)[0], hash=None, sha256=None)
            listed.append(entry)
        return listed

    def model(self, name: str | None = None) -> dict[str, Any]:
        """The recorded entry of checkpoint ``name`` (the loaded one by default)."""
        wanted = name or self.loaded
        entry: dict[str, Any] = next(m for m in MODELS if m["model_name"] == wanted)
        return entry

    def load(self, title: Any) -> None:
        """Load the checkpoint ``title`` names, as A1111 resolves it; others are ignored."""
        for model in MODELS:
            if isinstance(title, str) and checkpoint_matches(title, model):
                self.loaded = model["model_name"]
                self.hashed.add(self.loaded)
        loaded = self.model()
        self.options["sd_model_checkpoint"] = loaded["title"]
        self.options["sd_checkpoint_hash"] = loaded["sha256"]

    def _authorized(self, request: Request) -> bool:
        if self.auth is None:
            return True
        expected = base64.b64encode(":".join(self.auth).encode()).decode()
        return secrets.compare_digest(request.headers.get("authorization", ""), f"Basic {expected}")

    def app(self) -> FastAPI:
        api = FastAPI()

        @api.middleware("http")
        async def basic_auth(request: Request, call_next: Any) -> Response:
            if request.url.path.startswith("/sdapi") and not self._authorized(request):
                return JSONResponse(
                    ERRORS["unauthorized"][1], 401, headers={"www-authenticate": "Basic"}
                )
            response: Response = await call_next(request)
            return response

        @api.post("/sdapi/v1/txt2img")
        async def txt2img(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            if self.armed:
                status, error = ERRORS[self.armed.pop(0)]
                return JSONResponse(error, status)
            if self._lock is None:
                self._lock = asyncio.Lock()
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                async with self._lock:
                    return await self._run(body)
            finally:
                self.inflight -= 1

        @api.post("/sdapi/v1/img2img")
        async def img2img(request: Request) -> Response:
            body = await request.json()
            self.edits.append(body)
            if self.armed:
                status, error = ERRORS[self.armed.pop(0)]
                return JSONResponse(error, status)
            if not body.get("init_images"):
                return JSONResponse(ERRORS["init_image_not_found"][1], 404)
            try:
                init = _decode(body["init_images"][0])
                mask = _decode(body["mask"]) if body.get("mask") else None
            except ValueError:
                return JSONResponse(ERRORS["invalid_encoded_image"][1], 500)
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                return await self._run(body, lambda w, h, s: _repaint(init, mask, w, h, s))

        @api.get("/sdapi/v1/progress")
        async def progress() -> dict[str, Any]:
            answer: dict[str, Any] = recorded("progress-run" if self.busy else "progress")
            answer["progress"] = self.step / self.steps if self.steps else 0.0
            answer["eta_relative"] = (self.steps - self.step) * self.step_s
            answer["state"].update(
                interrupted=self._interrupted,
                job_count=int(self.busy),
                job_timestamp=self._timestamp,
                sampling_step=self.step,
                sampling_steps=self.steps,
            )
            return answer

        @api.post("/sdapi/v1/interrupt")
        async def interrupt() -> dict[str, Any]:
            self.interrupts += 1
            if self.busy:
                self._interrupted = True
            return {}

        @api.get("/sdapi/v1/sd-models")
        async def sd_models() -> list[dict[str, Any]]:
            return self.sd_models()

        @api.get("/sdapi/v1/options")
        async def get_options() -> dict[str, Any]:
            return self.options

        @api.post("/sdapi/v1/options")
        async def set_options(request: Request) -> Any:
            options = await request.json()
            if "sd_model_checkpoint" in options:
                self.load(options.pop("sd_model_checkpoint"))
            self.options.update({k: v for k, v in options.items() if k in self.options})
            return None

        for name in _LISTS:
            api.add_api_route(
                f"/sdapi/v1/{name}", lambda name=name: recorded(name), methods=["GET"]
            )
        return api

    async def _run(self, body: dict[str, Any], render: Any = None) -> Response:
        """One job: step by step until done or interrupted; either way it answers 200.

        img2img runs ``int(denoising_strength * steps)`` steps, as A1111 does."""
        steps = int(body.get("steps", 50))
        if "init_images" in body:
            steps = int(min(float(body.get("denoising_strength", 0.75)), 0.999) * steps)
        n = int(body.get("batch_size", 1)) * int(body.get("n_iter", 1))
        seed = int(body.get("seed", -1))
        if seed == -1:
            seed = random.randrange(4294967294)
        width, height = int(body.get("width", 512)), int(body.get("height", 512))
        before = self.loaded
        override = body.get("override_settings") or {}
        if "sd_model_checkpoint" in override:
            self.load(override["sd_model_checkpoint"])
        model = self.model()
        self._timestamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        self.busy, self._interrupted, self.step, self.steps = True, False, 0, steps
        try:
            for _ in range(steps):
                if self._interrupted:
                    break
                await asyncio.sleep(self.step_s)
                self.step += 1
        finally:
            self.busy = False
            if body.get("override_settings_restore_afterwards", True):
                self.load(self.model(before)["title"])
        seeds = self.all_seeds or [seed + i for i in range(n)]
        sampler, schedule = _schedule_label(
            body.get("sampler_name") or body.get("sampler_index") or "Euler",
            body.get("scheduler"),
        )
        cfg = float(body.get("cfg_scale", 7.0))
        prompt, negative = body.get("prompt", ""), body.get("negative_prompt", "")
        subseed = random.randrange(4294967294)

        def infotext(seed: int) -> str:
            neg = f"\nNegative prompt: {negative}" if negative else ""
            return (
                f"{prompt}{neg}\nSteps: {steps}, Sampler: {sampler}, Schedule type: {schedule}, "
                f"CFG scale: {cfg}, Seed: {seed}, Size: {width}x{height}, Model hash: "
                f"{model['hash']}, Model: {model['model_name']}, Version: 1.10.1"
            )

        info = json.loads(_TEMPLATE["info"])
        info.update(
            prompt=prompt,
            all_prompts=[prompt] * n,
            negative_prompt=negative,
            all_negative_prompts=[negative] * n,
            seed=seeds[0],
            all_seeds=seeds,
            subseed=subseed,
            all_subseeds=[subseed + i for i in range(n)],
            width=width,
            height=height,
            sampler_name=sampler,
            cfg_scale=cfg,
            steps=steps,
            batch_size=n,
            sd_model_name=model["model_name"],
            sd_model_hash=model["hash"],
            infotexts=[infotext(s) for s in seeds],
            job_timestamp=self._timestamp,
        )
        parameters = copy.deepcopy(_TEMPLATE["parameters"])
        parameters.update({k: v for k, v in body.items() if k in parameters})
        render = render or (lambda w, h, s: tiny_png(w, h, shade=s))
        images = [base64.b64encode(render(width, height, s)).decode() for s in seeds]
        payload = {"images": images, "parameters": parameters, "info": json.dumps(info)}
        return JSONResponse(payload)


def _decode(text: str) -> Image.Image:
    """A1111's ``decode_base64_to_image``: raw base64 or a data URI; ValueError if unreadable."""
    if text.startswith("data:image/"):
        text = text.split(";", 1)[1].split(",", 1)[1]
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as img:
            img.load()
            return img.copy()
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ValueError("Invalid encoded image") from exc


def _repaint(
    init: Image.Image, mask: Image.Image | None, width: int, height: int, seed: int
) -> bytes:
    """The init image resized to the target, its masked area (or all of it) in seed's colour."""
    base = init.convert("RGB").resize((width, height))
    paint = Image.new("RGB", (width, height), (seed % 256, 200, 40))
    if mask is None:
        base = Image.blend(base, paint, 0.5)
    else:
        rgba = mask.mode == "RGBA" and mask.getchannel("A").getextrema() != (255, 255)
        alpha = mask.getchannel("A") if rgba else mask.convert("L")
        base.paste(paint, (0, 0), alpha.point(lambda v: 255 if v > 128 else 0).resize(base.size))
    out = io.BytesIO()
    base.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def a1111_provider(url: str, name: str = "sd", **cfg: Any) -> A1111Provider:
    """An a1111 provider for ``url`` whose Basic credentials come from the canary variable."""
    settings: dict[str, Any] = {"url": url, "auth_env": CANARY_ENV, **cfg}
    return A1111Provider(name, A1111Config(**settings))


@case("a1111")
def a1111_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The fake behind --api-auth with the canary as the password."""
    fake = A1111Fake(auth=("", CANARY))
    base = stack.enter_context(serve_app(fake.app()))

    def at(url: str) -> A1111Provider:
        return a1111_provider(url, tls_timeout_s=0.5, progress_interval_s=0.05)

    return Setup(
        provider=at(base),
        arm=fake.arm,
        errors=MAPPED,
        at_url=at,
        tls_timeout_s=0.5,
        edit_errors=EDIT_ERRORS,
        extra={"fake": fake},
    )
