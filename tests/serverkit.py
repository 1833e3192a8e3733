"""Helpers for server tests: fake providers, settings, a live app on a uvicorn thread, and
`imagegate` subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from faults import serve_app
from PIL import Image

from imagegate.config import GatewaySettings, ServerSettings, Settings, parse_settings
from imagegate.errors import ProviderError
from imagegate.gateway import Gateway
from imagegate.providers.base import Deadline, Progress, ProgressCallback, Provider, ProviderConfig
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.server import create_app

IMAGEGATE = str(Path(sys.executable).parent / "imagegate")
"""The `imagegate` command of the running Python's environment."""


def tiny_png(
    width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 80, 40)
) -> bytes:
    """A small real PNG."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


class Fake(Provider):
    """A remote-like provider whose delay, steps and failure the test sets."""

    type = "fake"

    def __init__(
        self,
        name: str,
        *,
        fail: Callable[[], ProviderError] | None = None,
        delay_s: float = 0.0,
        steps: int = 0,
        step_s: float = 0.0,
        concurrency: int = 4,
        paid: bool = False,
        cost: float = 0.0,
    ) -> None:
        super().__init__(
            name,
            ProviderConfig(type="fake", concurrency=concurrency, paid=paid, cost_per_image=cost),
        )
        self.fail = fail
        self.delay_s = delay_s
        self.steps = steps
        self.step_s = step_s
        self.calls = 0
        self.active = 0
        self.peak = 0

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        self.calls += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            for step in range(1, self.steps + 1):
                await asyncio.sleep(self.step_s)
                if progress is not None:
                    progress(Progress(step, self.steps))
            if self.fail is not None:
                raise self.fail()
            seed = request.seed if request.seed is not None else 7
            width, height = request.width or 64, request.height or 64
            return [
                GeneratedImage(
                    png=tiny_png(width, height), width=width, height=height, seed=seed + i
                )
                for i in range(request.n)
            ]
        finally:
            self.active -= 1

    async def probe(self, deadline: Deadline) -> None:
        if self.fail is not None:
            raise self.fail()


def fake_settings(route: list[str], **server: Any) -> Settings:
    """Settings naming the fake providers on ``route``."""
    return Settings(
        gateway=GatewaySettings(route=route, deadline_s=30),
        server=ServerSettings(**server),
        providers={name: ProviderConfig(type="fake") for name in route},
    )


@dataclass
class Live:
    """A running server: its base URL and its app."""

    url: str
    app: FastAPI

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.ctx.gateway
        return gateway


@contextlib.contextmanager
def live(settings: Settings, providers: Mapping[str, Provider] | None = None) -> Iterator[Live]:
    """Run create_app on a uvicorn thread on 127.0.0.1; yield its URL and app."""
    app = create_app(settings, providers=providers)
    with serve_app(app) as url:
        yield Live(url, app)


def tiny_settings(model: Path, **local: Any) -> Settings:
    """Settings with one provider, ``local``: the tiny pipeline, 64x64, 2 steps."""
    config = {"type": "diffusers", "model": str(model), "vae": "full", "steps": 2}
    config |= {"width": 64, "height": 64} | local
    return parse_settings({"gateway": {"route": ["local"]}, "providers": {"local": config}})


NUMPY_COPY_WARNING = (
    # diffusers' Euler scheduler calls np.array() on a torch tensor; numpy 2 complains.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def stopped_at_exit(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``proc``, terminated on exit if still running (killed if it ignores that for 10 s)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen[bytes], late: str, every_s: float) -> None:
    """Poll ``url`` until it answers 2xx; fail if ``proc`` exits, or with ``late`` after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, timeout=1).is_success:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "the server exited while starting"
        assert time.monotonic() < deadline, late
        time.sleep(every_s)


def close_gateway_at_shutdown(app: FastAPI, gateway: Gateway) -> None:
    """Have ``app`` close ``gateway`` when it stops (create_app leaves a gateway passed in
    open), so its database connections are not left for the garbage collector."""
    lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def closing(running: FastAPI) -> AsyncIterator[None]:
        async with lifespan(running):
            yield
        await gateway.aclose()

    app.router.lifespan_context = closing
