"""Connect hedging and request hedging in the router, on real loopback connections."""

from __future__ import annotations

import asyncio
import io
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
import trustme
from faults import FaultServer, Reply, app, hold, serve_app
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagegate.config import GatewaySettings
from imagegate.providers.base import Deadline, ProgressCallback, Provider, RemoteConfig
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.router import Router
from imagegate.transport import Transport

REQUEST = ImageRequest(prompt="a fox", seed=1)


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


class NetConfig(RemoteConfig):
    type: str = "net"


class NetProvider(Provider):
    """A minimal remote provider: one GET through the transport returns the image."""

    type = "net"
    Config = NetConfig

    def __init__(
        self, name: str, url: str, ssl_ctx: ssl.SSLContext | None = None, *, paid: bool = False
    ) -> None:
        super().__init__(name, NetConfig(url=url, tls_timeout_s=2.0, paid=paid))
        self.transport = Transport.for_config(name, NetConfig(url=url), verify=ssl_ctx or True)

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        resp = await self.transport.request("GET", "/image", deadline=deadline)
        return [GeneratedImage(png=resp.content, width=8, height=8, seed=request.seed or 0)]

    async def probe(self, deadline: Deadline) -> str | None:
        await self.transport.request("GET", "/image", deadline=deadline)
        return "answers"

    async def aclose(self) -> None:
        await self.transport.aclose()


def image_app(delay_s: float = 0.0) -> tuple[Starlette, list[float]]:
    """A server whose /image answers a PNG after ``delay_s``; records request times."""
    seen: list[float] = []

    async def image(request: Request) -> Response:
        seen.append(time.monotonic())
        await asyncio.sleep(delay_s)
        return Response(tiny_png(), media_type="image/png")

    return Starlette(routes=[Route("/image", image)]), seen


@pytest.fixture
def healthy() -> Iterator[tuple[str, list[float]]]:
    """A plain-http provider that answers at once."""
    starlette_app, seen = image_app()
    with serve_app(starlette_app) as url:
        yield url, seen


def make_router(*providers: Provider, **settings: float) -> Router:
    cfg = GatewaySettings(route=[p.name for p in providers], **settings)  # type: ignore[arg-type]
    return Router(cfg, {p.name: p for p in providers})


async def run_once(router: Router) -> tuple[str, list[tuple[str, str, str | None]], float]:
    started = time.monotonic()
    result = await router.run(REQUEST, list(router.providers), Deadline(30))
    summary: list[tuple[str, str, str | None]] = [
        (a.provider, a.outcome, a.error.stage if a.error else None) for a in result.attempts
    ]
    return result.provider.name, summary, time.monotonic() - started


async def close(router: Router) -> None:
    await router.aclose()
    for provider in router.providers.values():
        await provider.aclose()


def request_once(router: Router) -> tuple[str, list[tuple[str, str, str | None]], float]:
    """``run_once`` in a fresh event loop, the router and its providers closed after it."""

    async def scenario() -> tuple[str, list[tuple[str, str, str | None]], float]:
        try:
            return await run_once(router)
        finally:
            await close(router)

    return asyncio.run(scenario())


def test_stalled_handshake_is_raced_and_loses_after_half_a_second(
    tls_stall: str, client_ssl: ssl.SSLContext, healthy: tuple[str, list[float]]
) -> None:
    """Route [stalled TLS, healthy]: served by the healthy one in about 0.5 s, stage tls named."""
    router = make_router(
        NetProvider("stalled", tls_stall, client_ssl), NetProvider("ok", healthy[0])
    )

    served_by, attempts, elapsed = request_once(router)
    assert served_by == "ok"
    assert attempts == [("stalled", "error", "tls"), ("ok", "ok", None)]
    assert 0.4 < elapsed < 1.5


def test_without_hedging_the_stall_costs_the_tls_budget(
    tls_stall: str, client_ssl: ssl.SSLContext, healthy: tuple[str, list[float]]
) -> None:
    """hedge_connect_after_s = 0: the healthy provider answers after the 2 s TLS budget."""
    router = make_router(
        NetProvider("stalled", tls_stall, client_ssl),
        NetProvider("ok", healthy[0]),
        hedge_connect_after_s=0,
    )

    served_by, attempts, elapsed = request_once(router)
    assert served_by == "ok"
    assert attempts[0] == ("stalled", "error", "tls")
    assert 1.9 < elapsed < 3.5


def test_slow_but_live_handshake_keeps_its_budget_when_nothing_is_faster(
    fault_server: Callable[..., FaultServer],
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    ca: trustme.CA,
) -> None:
    """With no other provider on the route, a slow link is not cut at 0.5 s."""

    def slow_then_answer(request: object) -> Reply:
        time.sleep(0.8)
        return Reply(status=200, headers={"content-type": "image/png"}, body=tiny_png())

    server = fault_server(app(slow_then_answer), tls=server_ssl)
    router = make_router(NetProvider("slow", server.url, client_ssl))

    assert request_once(router)[0] == "slow"


def test_losing_handshake_never_sends_its_request(
    fault_server: Callable[..., FaultServer],
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    healthy: tuple[str, list[float]],
) -> None:
    """The dropped contender's server never sees a request line."""
    stalled = fault_server(hold(), tls=server_ssl)
    router = make_router(
        NetProvider("stalled", stalled.url, client_ssl), NetProvider("ok", healthy[0])
    )

    request_once(router)
    assert stalled.requests == []


def test_next_request_skips_the_stalled_provider_while_its_breaker_is_open(
    tls_stall: str, client_ssl: ssl.SSLContext, healthy: tuple[str, list[float]]
) -> None:
    """After losing a handshake race, the stalled provider is skipped without a connection."""
    router = make_router(
        NetProvider("stalled", tls_stall, client_ssl), NetProvider("ok", healthy[0])
    )

    async def scenario() -> tuple[list[tuple[str, str, str | None]], float]:
        try:
            await run_once(router)
            _, attempts, elapsed = await run_once(router)
            return attempts, elapsed
        finally:
            await close(router)

    attempts, elapsed = asyncio.run(scenario())
    assert attempts == [("stalled", "skipped", None), ("ok", "ok", None)]
    assert elapsed < 0.3


def test_request_hedging_races_a_lagging_unpaid_answer() -> None:
    """hedge_after_s: a slow unpaid provider is raced by the next one; the first answer wins.

    The loser is cancelled and counted as slow, so its breaker keeps the next request off it.
    """
    slow_app, slow_seen = image_app(delay_s=2.0)
    fast_app, fast_seen = image_app()
    with serve_app(slow_app) as slow_url, serve_app(fast_app) as fast_url:
        router = make_router(
            NetProvider("slow", slow_url), NetProvider("fast", fast_url), hedge_after_s=0.3
        )

        served_by, attempts, elapsed = request_once(router)
    assert served_by == "fast"
    assert attempts == [("slow", "cancelled", "first_byte"), ("fast", "ok", None)]
    assert elapsed < 1.5
    assert len(slow_seen) == len(fast_seen) == 1
    assert router.breakers["slow"].is_open


def test_request_hedging_never_resends_to_a_paid_provider() -> None:
    """A paid next provider is not raced: the slow answer is awaited."""
    slow_app, _ = image_app(delay_s=0.6)
    fast_app, fast_seen = image_app()
    with serve_app(slow_app) as slow_url, serve_app(fast_app) as fast_url:
        router = make_router(
            NetProvider("slow", slow_url),
            NetProvider("paid", fast_url, paid=True),
            hedge_after_s=0.1,
        )

        assert request_once(router)[0] == "slow"
    assert fast_seen == []


def test_probe_closes_the_breaker_once_the_stalled_host_recovers(
    fault_server: Callable[..., FaultServer],
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    healthy: tuple[str, list[float]],
) -> None:
    """The background probe, not a user request, puts the recovered host back on the route."""
    stalled = fault_server(hold(), tls=server_ssl)
    router = make_router(
        NetProvider("stalled", stalled.url, client_ssl), NetProvider("ok", healthy[0])
    )

    def answer(request: object) -> Reply:
        return Reply(status=200, headers={"content-type": "image/png"}, body=tiny_png())

    async def scenario() -> str:
        try:
            await run_once(router)
            assert router.breakers["stalled"].is_open
            stalled.set(app(answer))
            for _ in range(100):  # the first probe runs after the 2 s open period
                if not router.breakers["stalled"].is_open:
                    break
                await asyncio.sleep(0.1)
            name, _, _ = await run_once(router)
            return name
        finally:
            await close(router)

    assert asyncio.run(scenario()) == "stalled"
