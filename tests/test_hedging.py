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
from imagegate.errors import AllProvidersFailed, Timeout
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
    """Route [stalled TLS, healthy]: served by the healthy one after about 0.5 s, before the
    stalled handshake's 2 s TLS budget runs out (without the race it costs the whole budget,
    see the next test), stage tls named."""
    router = make_router(
        NetProvider("stalled", tls_stall, client_ssl), NetProvider("ok", healthy[0])
    )

    served_by, attempts, elapsed = request_once(router)
    assert served_by == "ok"
    assert attempts == [("stalled", "error", "tls"), ("ok", "ok", None)]
    assert 0.4 < elapsed < 1.9


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


# --------------------------------------------------------------------------- learned


class Latency:
    """A server whose /image answers after ``delay_s``, or never when ``delay_s`` is None."""

    def __init__(self, delay_s: float | None) -> None:
        self.delay_s = delay_s
        self.seen = 0

    def app(self) -> Starlette:
        async def image(request: Request) -> Response:
            self.seen += 1
            if self.delay_s is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay_s or 0.0)
            return Response(tiny_png(), media_type="image/png")

        return Starlette(routes=[Route("/image", image)])


LEARN = {"learn_min_samples": 5, "hedge_min_s": 0.05, "hang_min_s": 0.2}


async def train(router: Router, times: int) -> None:
    for _ in range(times):
        await router.run(REQUEST, list(router.providers), Deadline(30))


def test_unpaid_provider_is_hedged_after_its_learned_p95() -> None:
    """Without hedge_after_s, a lagging unpaid provider with history is raced at its p95."""
    primary, backup = Latency(0.02), Latency(0.0)
    with serve_app(primary.app()) as p_url, serve_app(backup.app()) as b_url:
        router = make_router(NetProvider("p", p_url), NetProvider("b", b_url), **LEARN)

        async def scenario() -> list[tuple[str, str, str | None]]:
            try:
                await train(router, 6)
                primary.delay_s = 5.0
                result = await router.run(REQUEST, list(router.providers), Deadline(30))
                return [(a.provider, a.outcome, a.note) for a in result.attempts]
            finally:
                await close(router)

        attempts = asyncio.run(scenario())
    assert [(name, outcome) for name, outcome, _ in attempts] == [
        ("p", "cancelled"),
        ("b", "ok"),
    ]
    assert "hedged after" in (attempts[0][2] or "")
    assert "p95 of 6 successes" in (attempts[0][2] or "")
    assert not router.breakers["p"].is_open  # one race lost at the p95 is not a fault


def test_no_history_no_hedge() -> None:
    """A slow unpaid provider without learn_min_samples successes is awaited, not raced."""
    primary, backup = Latency(0.3), Latency(0.0)
    with serve_app(primary.app()) as p_url, serve_app(backup.app()) as b_url:
        router = make_router(NetProvider("p", p_url), NetProvider("b", b_url), **LEARN)
        served_by, attempts, _ = request_once(router)
    assert served_by == "p"
    assert attempts == [("p", "ok", None)]
    assert backup.seen == 0


def test_first_byte_past_the_learned_p99_multiple_is_a_hang() -> None:
    """A paid provider with history that stops answering: Timeout(first_byte), not resent.

    The message names the expected and the waited time; the attempt notes the learned limit.
    """
    primary, backup = Latency(0.02), Latency(0.0)
    with serve_app(primary.app()) as p_url, serve_app(backup.app()) as b_url:
        router = make_router(
            NetProvider("p", p_url, paid=True), NetProvider("b", b_url, paid=True), **LEARN
        )

        async def scenario() -> AllProvidersFailed:
            try:
                await train(router, 5)
                primary.delay_s = None
                with pytest.raises(AllProvidersFailed) as info:
                    await router.run(REQUEST, list(router.providers), Deadline(30))
                return info.value
            finally:
                await close(router)

        failed = asyncio.run(scenario())
    assert isinstance(failed.last, Timeout)
    assert failed.last.stage == "first_byte"
    assert "where about" in failed.last.message
    assert "treated as a hang" in failed.last.message
    assert "not sent elsewhere" in str(failed)
    assert "learned first-byte limit" in (failed.attempts[0].note or "")
    assert backup.seen == 0


def test_hang_detection_off_waits_the_configured_budget() -> None:
    """hang_p99_multiple = 0: the same hang runs to first_byte_timeout_s, with its message."""
    primary = Latency(0.02)
    with serve_app(primary.app()) as p_url:
        provider = NetProvider("p", p_url, paid=True)
        provider.transport = Transport.for_config(
            "p", NetConfig(url=p_url, first_byte_timeout_s=0.5)
        )
        router = make_router(provider, hang_p99_multiple=0, **LEARN)

        async def scenario() -> AllProvidersFailed:
            try:
                await train(router, 5)
                primary.delay_s = None
                with pytest.raises(AllProvidersFailed) as info:
                    await router.run(REQUEST, list(router.providers), Deadline(30))
                return info.value
            finally:
                await close(router)

        failed = asyncio.run(scenario())
    assert isinstance(failed.last, Timeout)
    assert failed.last.stage == "first_byte"
    assert "raise first_byte_timeout_s" in failed.last.message
    assert failed.attempts[0].note is None


def test_router_reports_learned_quantiles_and_effective_timeouts() -> None:
    """learned(): p50 / p95 / p99, the hedge delay and the learned first-byte limit per shape."""
    primary = Latency(0.02)
    with serve_app(primary.app()) as p_url:
        router = make_router(NetProvider("p", p_url), **LEARN)

        async def scenario() -> list[dict[str, object]]:
            try:
                await train(router, 5)
                return router.learned("p")
            finally:
                await close(router)

        (row,) = asyncio.run(scenario())
    assert row["shape"] == "default size, default steps"
    assert row["total"]["samples"] == 5  # type: ignore[index]
    assert row["first_byte_timeout_learned"] is True
    assert isinstance(row["first_byte_timeout_s"], float)
    assert row["first_byte_timeout_s"] < 120
    assert row["hedge_after_s"] is not None
