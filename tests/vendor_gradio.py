"""A real Gradio app and a fake Hub runtime API on 127.0.0.1, and the gradio conformance case.

Reuse them in any test (the tests folder is on ``sys.path``)::

    from vendor_gradio import gradio_app, FakeHub

    app = gradio_app()               # started once per test session; app.url, app.state
    app.state.arm("queue_full")      # the next call answers 503 (see ERRORS)
    app.state.seen                   # (method, path, headers) of every request it got
    with FakeHub(host=app.url) as hub:          # GET /api/spaces/{owner}/{name}
        hub.stage = "SLEEPING"                  # what runtime.stage says from now on
        config = {"type": "gradio", "space": "owner/name", "hub_url": hub.url}

The app is the ``gradio`` package itself (Gradio 5+, ``/gradio_api``), mounted on FastAPI
and served by uvicorn on a thread. Its endpoints: ``/infer`` (prompt, negative_prompt, seed,
randomize_seed, width, height, guidance_scale, num_inference_steps -> a WebP image and the
seed, the shape of most text-to-image Spaces), ``/paint`` (description, noise_seed -> an
image: names the default mapping does not know), ``/caption`` (text -> text), and the edit
endpoints ``/edit`` (image, prompt, strength, seed -> the image tinted by strength, and the
seed) and ``/inpaint`` (image, mask, prompt, seed -> the image with the mask's white painted:
an app taking a plain mask image, providers.md section 13.8). It sleeps
``STEP_S`` per step. Nothing in it reaches beyond the loopback: analytics are off, there is no
share link, and an audit hook records any connection to another address (``OUTSIDE``,
``GradioApp.outside_at_start``).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from conformance import CANARY_ENV, Setup, case
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faults import serve_app

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
from imagegate.providers.gradio import GradioConfig, GradioProvider

__all__ = ["ERRORS", "OUTSIDE", "STEP_S", "AppState", "FakeHub", "GradioApp", "gradio_app"]

STEP_S = 0.025  # seconds the app sleeps per step: 2 steps are quick, 40 outlast a cancel

HTTP_ERRORS: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {
    "queue_full": (503, {"detail": "Queue is full. Max size is 1 and size is 1."}, {}),
    "rate_limited": (429, {"detail": "Too many requests"}, {"retry-after": "7"}),
    "unauthorized": (401, {"detail": "Not authenticated"}, {}),
}
"""Errors the app's call route answers once armed: status, body, headers."""

UPLOAD_ERRORS: dict[str, tuple[int, bytes]] = {
    "upload_too_large": (413, b"File size exceeds the maximum allowed size of 1 MB"),
}
"""Errors the app's upload route answers once armed (gradio's plain-text 413)."""

APP_ERRORS: dict[str, str] = {
    "app_error": "CUDA out of memory. Tried to allocate 2.00 GiB",
    "gpu_quota": "You have exceeded your GPU quota (60s requested vs. 0s left). Try again later",
    "nsfw": "NSFW content detected in the output; try another prompt",
    "out_of_range": "Value 4096 is greater than maximum value 1024.",
}
"""Errors the app's function raises once armed (``gr.Error``): they arrive as SSE ``error``."""

ERRORS: dict[str, type[ProviderError]] = {
    "queue_full": Unavailable,
    "rate_limited": RateLimited,
    "unauthorized": AuthError,
    "app_error": UpstreamError,
    "gpu_quota": QuotaExceeded,
    "nsfw": ContentFiltered,
    "out_of_range": InvalidRequest,
}
"""What each armed error must become in the error tree."""

EDIT_ERRORS: dict[str, type[ProviderError]] = {
    "upload_too_large": InvalidRequest,
    "app_error": UpstreamError,
    "queue_full": Unavailable,
    "gpu_quota": QuotaExceeded,
}
"""The errors an edit meets (the upload, then the call), and their classes."""

OUTSIDE: list[Any] = []
"""Addresses beyond the loopback that anything in this process tried to reach, once the
Gradio app was first started (an audit hook, installed then)."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            OUTSIDE.append(address)
    elif event == "socket.getaddrinfo" and args[0] not in (
        "127.0.0.1",
        "localhost",
        b"127.0.0.1",
        None,
    ):
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        if not host.endswith(".invalid"):  # the fault kit's own unresolvable names
            OUTSIDE.append(host)


@dataclass
class AppState:
    """What the app was asked and what it is told to do next."""

    armed: list[str] = field(default_factory=list)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arm(self, name: str) -> None:
        """Answer the next call with the error ``name`` (one of ERRORS)."""
        if name not in ERRORS and name not in EDIT_ERRORS:
            known = sorted({*ERRORS, *EDIT_ERRORS})
            raise KeyError(f"unknown Gradio error {name!r}; known: {known}")
        with self.lock:
            self.armed.append(name)

    def take(self, names: Any) -> str | None:
        with self.lock:
            for i, armed in enumerate(self.armed):
                if armed in names:
                    return self.armed.pop(i)
        return None

    def reset(self) -> None:
        with self.lock:
            self.armed.clear()
            self.seen.clear()

    def paths(self, method: str, suffix: str) -> list[str]:
        """Paths of the requests seen with ``method`` whose path ends with ``suffix``."""
        return [p for m, p, _ in list(self.seen) if m == method and p.endswith(suffix)]


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class _Watch:
    """ASGI middleware: record every request, answer an armed HTTP error on a call."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.state.seen.append((scope["method"], scope["path"], headers))
            is_upload = scope["method"] == "POST" and scope["path"].endswith("/upload")
            if is_upload and (name := self.state.take(UPLOAD_ERRORS)) is not None:
                status, text = UPLOAD_ERRORS[name]
                raw = [(b"content-type", b"text/plain; charset=utf-8")]
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": text})
                return
            is_call = scope["method"] == "POST" and "/call/" in scope["path"]
            armed = self.state.take(HTTP_ERRORS) if is_call else None
            if armed is not None:
                status, body, extra = HTTP_ERRORS[armed]
                raw = [(b"content-type", b"application/json")]
                raw += [(k.encode(), v.encode()) for k, v in extra.items()]
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": json.dumps(body).encode()})
                return
        await self.app(scope, receive, send)


def _build(state: AppState) -> ASGIApp:
    """The Gradio app, built inside a running loop so Gradio makes no event loops of its own."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="imagegate-test-gradio-"))
    # Gradio summarises event timings with pandas after each event, which warns on pandas 3.
    os.environ["GRADIO_ANALYTICS_CACHE_FREQUENCY"] = str(10**9)

    async def build() -> ASGIApp:
        import gradio as gr
        from PIL import Image

        def infer(
            prompt: str,
            negative_prompt: str,
            seed: float,
            randomize_seed: bool,
            width: float,
            height: float,
            guidance_scale: float,
            num_inference_steps: float,
        ) -> tuple[Any, int]:
            armed = state.take(APP_ERRORS)
            if armed is not None:
                raise gr.Error(APP_ERRORS[armed])
            used = 99 if randomize_seed else int(seed)
            time.sleep(STEP_S * int(num_inference_steps))
            colour = (used % 251, len(prompt) % 256, int(guidance_scale * 10) % 256)
            return Image.new("RGB", (int(width), int(height)), colour), used

        def paint(description: str, noise_seed: float) -> Any:
            return Image.new("RGB", (96, 64), (int(noise_seed) % 256, len(description), 0))

        def caption(text: str) -> str:
            return text.upper()

        def edit(
            image: Any, prompt: str, strength: float, seed: float, num_inference_steps: float
        ) -> tuple[Any, int]:
            armed = state.take(APP_ERRORS)
            if armed is not None:
                raise gr.Error(APP_ERRORS[armed])
            if image is None:
                raise gr.Error("No input image given")
            time.sleep(STEP_S * int(num_inference_steps))
            tint = Image.new("RGB", image.size, (int(seed) % 251, 240, 0))
            return Image.blend(image.convert("RGB"), tint, float(strength)), int(seed)

        def inpaint(image: Any, mask: Any, prompt: str, seed: float) -> tuple[Any, int]:
            if image is None or mask is None:
                raise gr.Error("Upload an image and a mask")
            if mask.size != image.size:
                raise gr.Error("The mask must have the image's size")
            out = image.convert("RGB")
            out.paste((int(seed) % 251, 240, 0), (0, 0, *out.size), mask.convert("L"))
            return out, int(seed)

        with gr.Blocks(analytics_enabled=False) as demo:
            text = gr.Textbox(label="Text")
            said = gr.Textbox(label="Caption")
            gr.Button("caption").click(caption, [text], [said], api_name="caption")
            prompt = gr.Textbox(label="Prompt")
            negative = gr.Textbox(label="Negative prompt")
            seed = gr.Slider(0, 2**31 - 1, value=0, step=1, label="Seed")
            randomize = gr.Checkbox(value=True, label="Randomize seed")
            width = gr.Slider(64, 1024, value=512, step=8, label="Width")
            height = gr.Slider(64, 1024, value=512, step=8, label="Height")
            guidance = gr.Slider(0, 20, value=0.0, label="Guidance scale")
            steps = gr.Slider(1, 50, value=4, step=1, label="Number of inference steps")
            image = gr.Image(type="pil", label="Result")
            used = gr.Number(label="Seed")
            inputs = [prompt, negative, seed, randomize, width, height, guidance, steps]
            gr.Button("run").click(
                infer, inputs, [image, used], api_name="infer", concurrency_limit=4
            )
            description = gr.Textbox(label="Description")
            noise = gr.Number(label="Noise seed", value=0)
            painted = gr.Image(type="pil", format="png", label="Painting")
            gr.Button("paint").click(paint, [description, noise], [painted], api_name="paint")
            source = gr.Image(type="pil", label="Input image")
            mask = gr.Image(type="pil", image_mode="L", label="Mask")
            strength = gr.Slider(0, 1, value=0.6, label="Strength")
            edited = gr.Image(type="pil", format="png", label="Edited")
            edit_seed = gr.Number(label="Seed", value=0)
            gr.Button("edit").click(
                edit,
                [source, prompt, strength, edit_seed, steps],
                [edited, used],
                api_name="edit",
            )
            gr.Button("inpaint").click(
                inpaint, [source, mask, prompt, edit_seed], [edited, used], api_name="inpaint"
            )
        mounted: ASGIApp = gr.mount_gradio_app(FastAPI(), demo, path="")
        return mounted

    return _Watch(asyncio.run(build()), state)


@dataclass
class GradioApp:
    """The running app: its base URL, its state, and what it tried to reach while starting."""

    url: str
    state: AppState
    outside_at_start: list[Any]


_shared: list[GradioApp] = []
_shared_lock = threading.Lock()


def gradio_app() -> GradioApp:
    """The Gradio app, started on first use and kept for the rest of the test session."""
    with _shared_lock:
        if not _shared:
            sys.addaudithook(_audit)  # from here on, for the rest of the process
            before = len(OUTSIDE)
            state = AppState()
            stack = ExitStack()
            url = stack.enter_context(serve_app(_build(state)))
            atexit.register(stack.close)
            _shared.append(GradioApp(url, state, OUTSIDE[before:]))
        app = _shared[0]
    app.state.reset()
    return app


class FakeHub:
    """The Hub's ``GET /api/spaces/{owner}/{name}``: runtime.stage and host, as set."""

    def __init__(self, *, host: str, stage: str = "RUNNING") -> None:
        self.host = host
        self.stage = stage
        self.status: int | None = None  # answer this status instead, when set
        self.headers: dict[str, str] = {}  # with these headers
        self.requests: list[dict[str, str]] = []  # the headers of every request
        self.url = ""
        self._stack = ExitStack()

    def __enter__(self) -> FakeHub:
        app = FastAPI()

        @app.get("/api/spaces/{owner}/{name}")
        async def space(owner: str, name: str, request: Request) -> Response:
            self.requests.append(dict(request.headers))
            if self.status is not None:
                body = {"error": f"hub says {self.status}"}
                return JSONResponse(body, status_code=self.status, headers=self.headers)
            return JSONResponse(
                {
                    "id": f"{owner}/{name}",
                    "sdk": "gradio",
                    "host": self.host,
                    "subdomain": f"{owner}-{name}".lower(),
                    "runtime": {
                        "stage": self.stage,
                        "hardware": {"current": "cpu-basic", "requested": "cpu-basic"},
                        "gcTimeout": 172800,
                        "replicas": {"current": 1, "requested": 1},
                    },
                }
            )

        self.url = self._stack.enter_context(serve_app(app))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def provider_for(url: str, **settings: Any) -> GradioProvider:
    """A gradio provider at ``url`` that reads its token from the canary variable."""
    config = {"url": url, "token_env": CANARY_ENV, "tls_timeout_s": 0.5} | settings
    return GradioProvider("space", GradioConfig.model_validate(config))


@case("gradio")
def gradio_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The real Gradio app, its armed errors, its TLS stall."""
    app = gradio_app()
    stack.callback(app.state.reset)
    return Setup(
        provider=provider_for(app.url),
        arm=app.state.arm,
        errors=ERRORS,
        at_url=provider_for,
        tls_timeout_s=0.5,
        editor=provider_for(app.url, api_name="edit", image_param="image"),
        edit_errors=EDIT_ERRORS,
    )
