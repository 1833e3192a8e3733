"""The router's promises on real loopback servers: fail fast, explain, route around.

A route of two ``openai`` providers: ``primary`` points at a fault server (tests/faults.py),
``backup`` at the healthy fake OpenAI API (tests/vendor_openai.py). Both go through the
Gateway, the transport and the provider exactly as a user's request does.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conformance import CANARY_ENV
from faults import FaultServer, Reply, Request, app, hang, hold, respond, serve_app
from vendor_openai import OpenAIFake, openai_provider, tiny_png

from imagegate.config import Settings
from imagegate.errors import AllProvidersFailed, Timeout
from imagegate.gateway import Gateway
from imagegate.providers.base import Deadline
from imagegate.request import ImageRequest, ImageResult

REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=64)
ERROR_500 = {"error": {"message": "The server had an error", "type": "server_error"}}
Factory = Callable[..., FaultServer]


@pytest.fixture
def backup(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIFake, str]]:
    """The healthy fake OpenAI API, and its base URL; the providers' key variable is set."""
    monkeypatch.setenv(CANARY_ENV, "sk-test-router-faults-key")
    fake = OpenAIFake()
    with serve_app(fake.app()) as base:
        yield fake, base


def gateway(
    primary_url: str,
    backup_url: str,
    primary: dict[str, Any] | None = None,
    **settings: Any,
) -> Gateway:
    """A Gateway whose route is [primary, backup], without a store."""
    providers = {
        "primary": openai_provider(f"{primary_url}/v1", name="primary", **(primary or {})),
        "backup": openai_provider(f"{backup_url}/v1", name="backup"),
    }
    cfg = Settings.model_validate({"gateway": {"route": ["primary", "backup"], **settings}})
    return Gateway(cfg, store=False, providers=providers)


async def timed(gw: Gateway) -> tuple[ImageResult, float]:
    started = time.monotonic()
    result = await gw.generate(REQUEST)
    return result, time.monotonic() - started


def outcomes(result: ImageResult) -> list[str]:
    return [f"{a.provider}:{a.outcome}" for a in result.attempts]


def healthy_openai(request: Request) -> Reply:
    """A raw-socket OpenAI images API: the model list and one tiny image."""
    if request.path.endswith("/models"):
        return Reply.json({"object": "list", "data": [{"id": "dall-e-2", "object": "model"}]})
    image = base64.b64encode(tiny_png()).decode()
    return Reply.json({"created": int(time.time()), "data": [{"b64_json": image}]})


def test_refused_primary_fails_over_at_once(refused: str, backup: tuple[OpenAIFake, str]) -> None:
    """Nothing listening on the primary: the backup answers in well under a second."""

    async def scenario() -> tuple[ImageResult, float]:
        async with gateway(refused, backup[1]) as gw:
            return await timed(gw)

    result, elapsed = asyncio.run(scenario())
    assert result.provider == "backup"
    assert outcomes(result) == ["primary:error", "backup:ok"]
    assert result.attempts[0].error is not None
    assert result.attempts[0].error.type == "ConnectError"
    assert elapsed < 0.5


def test_server_error_primary_fails_over_at_once(
    fault_server: Factory, backup: tuple[OpenAIFake, str]
) -> None:
    """A primary answering 500 is routed around in well under a second."""
    primary = fault_server(respond(500, body=ERROR_500))

    async def scenario() -> tuple[ImageResult, float]:
        async with gateway(primary.url, backup[1]) as gw:
            return await timed(gw)

    result, elapsed = asyncio.run(scenario())
    assert outcomes(result) == ["primary:error", "backup:ok"]
    assert result.attempts[0].error is not None
    assert result.attempts[0].error.type == "UpstreamError"
    assert elapsed < 0.5


def test_hang_after_a_paid_send_is_a_first_byte_timeout_not_resent(
    fault_server: Factory, backup: tuple[OpenAIFake, str]
) -> None:
    """A paid primary that took the body and went silent: Timeout(first_byte), no resend."""
    primary = fault_server(hang())
    fake, base = backup

    async def scenario() -> None:
        async with gateway(primary.url, base, {"first_byte_timeout_s": 0.5}) as gw:
            await gw.generate(REQUEST)

    with pytest.raises(AllProvidersFailed) as info:
        asyncio.run(scenario())
    assert isinstance(info.value.last, Timeout)
    assert info.value.last.stage == "first_byte"
    assert "not sent elsewhere" in str(info.value)
    assert len(primary.requests) == 1
    assert fake.bodies == []


def test_dead_backend_costs_at_most_1_2_upstream_attempts_per_request(
    fault_server: Factory,
) -> None:
    """200 requests to a backend that drops every connection reach it <= 1.2 times each."""

    def drop(conn: Any) -> None:
        conn.reset()

    dead = fault_server(drop)
    providers = {"dead": openai_provider(f"{dead.url}/v1", name="dead", paid=False)}
    cfg = Settings.model_validate({"gateway": {"route": ["dead"]}})

    async def scenario() -> int:
        failures = 0
        async with Gateway(cfg, store=False, providers=providers) as gw:
            for _ in range(200):
                try:
                    await gw.generate(REQUEST)
                except AllProvidersFailed:
                    failures += 1
        return failures

    started = time.monotonic()
    assert asyncio.run(scenario()) == 200
    assert dead.accepted / 200 <= 1.2
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- TLS stall


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    """The test CA as a PEM file, for the providers' ca_file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _stall_first_request(
    stalled: FaultServer, backup_url: str, ca_file: str, **settings: Any
) -> tuple[ImageResult, float]:
    async def scenario() -> tuple[ImageResult, float]:
        async with gateway(stalled.url, backup_url, {"ca_file": ca_file}, **settings) as gw:
            return await timed(gw)

    return asyncio.run(scenario())


def test_tls_stall_with_connect_hedging_is_served_in_about_half_a_second(
    fault_server: Factory, server_ssl: ssl.SSLContext, backup: tuple[OpenAIFake, str], ca_file: str
) -> None:
    """Default hedge_connect_after_s (0.5): the backup answers ~0.5 s in; the stall says tls."""
    stalled = fault_server(hold(), tls=server_ssl)

    async def scenario() -> tuple[ImageResult, float, ImageResult, float]:
        async with gateway(stalled.url, backup[1], {"ca_file": ca_file}) as gw:
            first, first_s = await timed(gw)
            second, second_s = await timed(gw)
        return first, first_s, second, second_s

    first, first_s, second, second_s = asyncio.run(scenario())
    assert first.provider == "backup"
    assert 0.4 < first_s < 0.5 + 0.6
    attempt = first.attempts[0]
    assert attempt.provider == "primary"
    assert attempt.error is not None
    assert attempt.error.stage == "tls"
    assert outcomes(second) == ["primary:skipped", "backup:ok"]
    assert second_s < 0.2
    assert stalled.accepted == 1


def test_tls_stall_without_hedging_fails_over_within_the_tls_budget(
    fault_server: Factory, server_ssl: ssl.SSLContext, backup: tuple[OpenAIFake, str], ca_file: str
) -> None:
    """hedge_connect_after_s = 0: the stall ends at tls_timeout_s (2 s), then the backup serves."""
    stalled = fault_server(hold(), tls=server_ssl)
    result, elapsed = _stall_first_request(stalled, backup[1], ca_file, hedge_connect_after_s=0)
    assert outcomes(result) == ["primary:error", "backup:ok"]
    first = result.attempts[0]
    assert first.error is not None
    assert (first.error.type, first.error.stage) == ("Timeout", "tls")
    assert 1.9 < elapsed < 2.0 + 0.8


def test_open_breaker_keeps_requests_off_the_stalled_host_until_the_probe_closes_it(
    fault_server: Factory, server_ssl: ssl.SSLContext, backup: tuple[OpenAIFake, str], ca_file: str
) -> None:
    """After a TLS stall, requests skip the host; once it recovers, the probe closes the breaker."""
    stalled = fault_server(hold(), tls=server_ssl)
    primary = {"ca_file": ca_file, "tls_timeout_s": 0.3}

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with gateway(stalled.url, backup[1], primary) as gw:
            first = await gw.generate(REQUEST)
            seen["first"] = first.attempts[0].error
            seen["after_first"] = stalled.accepted
            later = [await gw.generate(REQUEST) for _ in range(20)]
            seen["later"] = {tuple(outcomes(r)) for r in later}
            seen["after_later"] = stalled.accepted
            stalled.set(app(healthy_openai))
            breaker = gw.router.breakers["primary"]
            wait = Deadline(8)
            while breaker.is_open and not wait.expired:  # noqa: ASYNC110 - polls a state
                await asyncio.sleep(0.05)
            seen["closed"] = not breaker.is_open
            seen["paths"] = [r.path for r in stalled.requests]
            seen["recovered"] = (await gw.generate(REQUEST)).provider
        return seen

    seen = asyncio.run(scenario())
    assert seen["first"].stage == "tls"
    assert seen["later"] == {("primary:skipped", "backup:ok")}
    assert seen["after_later"] == seen["after_first"] == 1
    assert seen["closed"]
    assert seen["paths"]
    assert all(p.endswith("/v1/models") for p in seen["paths"])
    assert seen["recovered"] == "primary"
