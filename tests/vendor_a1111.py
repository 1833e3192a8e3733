"""A loopback AUTOMATIC1111 API, and the ``a1111`` provider's conformance case.

``A1111Fake`` runs txt2img one at a time (like A1111's queue lock), ``step_s`` per step,
updating ``/sdapi/v1/progress`` as it goes; ``/sdapi/v1/interrupt`` ends the running job
early and, as A1111 does, the interrupted job still answers with what it has. ``info`` is a
JSON string whose ``all_seeds`` are seed + i. With ``auth`` set, every route wants HTTP Basic.
Armed errors answer the next txt2img with A1111's documented error shapes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from conformance import CANARY, CANARY_ENV, Setup, case
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faults import serve_app
from vendor_openai import tiny_png

from imagegate.errors import AuthError, InvalidRequest, Unavailable, UpstreamError
from imagegate.providers.a1111 import A1111Config, A1111Provider

SAMPLERS = ["Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC"]
CHECKPOINTS = ["v1-5-pruned-emaonly", "sd_xl_base_1.0"]

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


@dataclass
class A1111Fake:
    """The fake's state: auth, timing, what is armed, what it saw, the running job."""

    auth: tuple[str, str] | None = None
    step_s: float = 0.02
    armed: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    interrupts: int = 0
    all_seeds: list[int] | None = None
    """Seeds to report instead of seed + i (as a variation-seed job would)."""
    inflight: int = 0
    max_inflight: int = 0
    step: int = 0
    steps: int = 0
    busy: bool = False
    options: dict[str, Any] = field(
        default_factory=lambda: {"sd_model_checkpoint": CHECKPOINTS[0], "samples_format": "png"}
    )
    _interrupted: bool = False
    _lock: asyncio.Lock | None = None

    def arm(self, name: str) -> None:
        """Answer the next txt2img with the documented error ``name``."""
        if name not in ERRORS:
            raise KeyError(name)
        self.armed.append(name)

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
            if body.get("sampler_name", "Euler") not in SAMPLERS:
                return JSONResponse(ERRORS["sampler_not_found"][1], 400)
            if self._lock is None:
                self._lock = asyncio.Lock()
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                async with self._lock:
                    return await self._run(body)
            finally:
                self.inflight -= 1

        @api.get("/sdapi/v1/progress")
        async def progress() -> dict[str, Any]:
            fraction = self.step / self.steps if self.steps else 0.0
            return {
                "progress": fraction,
                "eta_relative": (self.steps - self.step) * self.step_s,
                "state": {
                    "skipped": False,
                    "interrupted": self._interrupted,
                    "job": "txt2img" if self.busy else "",
                    "job_count": int(self.busy),
                    "job_timestamp": "20260101000000",
                    "job_no": 0,
                    "sampling_step": self.step,
                    "sampling_steps": self.steps,
                },
                "current_image": None,
                "textinfo": None,
            }

        @api.post("/sdapi/v1/interrupt")
        async def interrupt() -> dict[str, Any]:
            self.interrupts += 1
            if self.busy:
                self._interrupted = True
            return {}

        @api.get("/sdapi/v1/sd-models")
        async def sd_models() -> list[dict[str, Any]]:
            return [
                {
                    "title": f"{name}.safetensors [6ce0161689]",
                    "model_name": name,
                    "hash": "6ce0161689",
                    "sha256": "6ce0161689" + "0" * 54,
                    "filename": f"/models/Stable-diffusion/{name}.safetensors",
                    "config": None,
                }
                for name in CHECKPOINTS
            ]

        @api.get("/sdapi/v1/samplers")
        async def samplers() -> list[dict[str, Any]]:
            return [{"name": name, "aliases": [], "options": {}} for name in SAMPLERS]

        @api.get("/sdapi/v1/options")
        async def get_options() -> dict[str, Any]:
            return self.options

        @api.post("/sdapi/v1/options")
        async def set_options(request: Request) -> Any:
            self.options.update(await request.json())
            return None

        return api

    async def _run(self, body: dict[str, Any]) -> Response:
        """One job: step by step until done or interrupted; either way it answers."""
        steps = int(body.get("steps", 50))
        n = int(body.get("batch_size", 1)) * int(body.get("n_iter", 1))
        seed = int(body.get("seed", -1))
        if seed == -1:
            seed = random.randrange(4294967294)
        width, height = int(body.get("width", 512)), int(body.get("height", 512))
        self.busy, self._interrupted, self.step, self.steps = True, False, 0, steps
        try:
            for _ in range(steps):
                if self._interrupted:
                    break
                await asyncio.sleep(self.step_s)
                self.step += 1
        finally:
            self.busy = False
        seeds = self.all_seeds or [seed + i for i in range(n)]
        checkpoint = (body.get("override_settings") or {}).get(
            "sd_model_checkpoint", self.options["sd_model_checkpoint"]
        )
        info = {
            "prompt": body.get("prompt", ""),
            "negative_prompt": body.get("negative_prompt", ""),
            "seed": seed,
            "all_seeds": seeds,
            "subseed": -1,
            "all_subseeds": [-1] * n,
            "width": width,
            "height": height,
            "sampler_name": body.get("sampler_name", "Euler"),
            "cfg_scale": body.get("cfg_scale", 7.0),
            "steps": steps,
            "batch_size": n,
            "sd_model_name": checkpoint,
            "infotexts": [f"{body.get('prompt', '')}\nSteps: {steps}, Seed: {s}" for s in seeds],
        }
        images = [base64.b64encode(tiny_png(width, height, shade=s)).decode() for s in seeds]
        payload = {"images": images, "parameters": body, "info": json.dumps(info)}
        return JSONResponse(payload)


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
        extra={"fake": fake},
    )
