"""The router learns each provider: probes that test what failed, learned hedging and hangs.

Real loopback servers: ``primary`` is a raw-socket fake OpenAI API (tests/faults.py) whose image
endpoint hangs while ``GET /v1/models`` answers; ``backup`` is the healthy fake OpenAI API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conformance import CANARY_ENV
from faults import FaultServer, Reply, Request, app, hang_where, serve_app
from serverkit import live
from vendor_openai import OpenAIFake, openai_provider, tiny_png

from imagegate.config import Settings, parse_settings
from imagegate.errors import AllProvidersFailed, Timeout
from imagegate.gateway import Gateway
from imagegate.providers.base import Deadline
from imagegate.request import ImageRequest, ImageResult

REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=64)
PROBE_PROMPT = "a red circle"
Factory = Callable[..., FaultServer]


@pytest.fixture
def backup(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIFake, str]]:
    """The healthy fake OpenAI API, and its base URL; the providers' key variable is set."""
    monkeypatch.setenv(CANARY_ENV, "sk-test-router-learning-key")
    fake = OpenAIFake()
    with serve_app(fake.app()) as base:
        yield fake, base


def answer(request: Request) -> Reply:
    """A raw-socket OpenAI images API: the model list and one tiny image."""
    if request.path.endswith("/models"):
        return Reply.json({"object": "list", "data": [{"id": "dall-e-2", "object": "model"}]})
    image = base64.b64encode(tiny_png()).decode()
    return Reply.json({"created": int(time.time()), "data": [{"b64_json": image}]})


def is_image(request: Request) -> bool:
    return request.path.endswith("/images/generations")


def prompt_of(request: Request) -> str | None:
    return str(json.loads(request.body).get("prompt")) if request.body else None


def user_images(server: FaultServer) -> int:
    """Image requests from callers (not from the generation probe) the server received."""
    return sum(1 for r in server.requests if is_image(r) and prompt_of(r) != PROBE_PROMPT)


def probe_images(server: FaultServer) -> int:
    return sum(1 for r in server.requests if is_image(r) and prompt_of(r) == PROBE_PROMPT)


def gateway(primary_url: str, backup_url: str, primary: dict[str, Any], **settings: Any) -> Gateway:
    providers = {
        "primary": openai_provider(f"{primary_url}/v1", name="primary", **primary),
        "backup": openai_provider(f"{backup_url}/v1", name="backup", paid=False),
    }
    cfg = Settings.model_validate({"gateway": {"route": ["primary", "backup"], **settings}})
    return Gateway(cfg, store=False, providers=providers)


def outcomes(result: ImageResult) -> list[str]:
    return [f"{a.provider}:{a.outcome}" for a in result.attempts]


async def until(check: Callable[[], bool], within_s: float = 10.0) -> bool:
    wait = Deadline(within_s)
    while not check() and not wait.expired:  # noqa: ASYNC110 - polls a state
        await asyncio.sleep(0.02)
    return check()


FAST_BREAKER = {"breaker_open_s": 0.1, "breaker_max_open_s": 0.3}


def test_unpaid_hang_is_paid_by_the_first_caller_only(
    fault_server: Factory, backup: tuple[OpenAIFake, str]
) -> None:
    """Images hang, /models answers: after the first caller, nobody reaches the image endpoint.

    The generation probe keeps the breaker open while images hang, and the first probe after
    the endpoint answers again closes it.
    """
    primary = fault_server(hang_where(is_image, answer))
    cfg = {"paid": False, "first_byte_timeout_s": 0.3}

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with gateway(primary.url, backup[1], cfg, **FAST_BREAKER) as gw:
            first = await gw.generate(REQUEST)
            seen["first"] = first.attempts[0].error
            later = []
            for _ in range(10):
                later.append(await gw.generate(REQUEST))
                await asyncio.sleep(0.1)
            seen["later"] = {tuple(outcomes(r)) for r in later}
            seen["user_images"] = user_images(primary)
            seen["probed_images"] = probe_images(primary) > 0
            breaker = gw.router.breakers["primary"]
            seen["open_while_hanging"] = breaker.is_open
            seen["probe_kind"] = breaker.probe_kind
            primary.set(app(answer))
            probes_before = probe_images(primary)
            seen["closed"] = await until(lambda: not breaker.is_open)
            seen["probes_after_recovery"] = probe_images(primary) - probes_before
            seen["recovered"] = (await gw.generate(REQUEST)).provider
        return seen

    seen = asyncio.run(scenario())
    assert (seen["first"].type, seen["first"].stage) == ("Timeout", "first_byte")
    assert seen["later"] == {("primary:skipped", "backup:ok")}
    assert seen["user_images"] == 1
    assert seen["probed_images"]
    assert seen["open_while_hanging"]
    assert seen["probe_kind"] == "generation"
    assert seen["closed"]
    assert seen["probes_after_recovery"] == 1
    assert seen["recovered"] == "primary"


def test_paid_hang_goes_half_open_and_its_trial_is_hedged_to_the_backup(
    fault_server: Factory, backup: tuple[OpenAIFake, str]
) -> None:
    """A paid primary is probed by /models only; its half-open trial request is hedged.

    No probe generates (it would cost money); the trial's caller gets the backup's image and
    the breaker reopens for longer each time, until the image endpoint answers again.
    """
    primary = fault_server(hang_where(is_image, answer))
    cfg = {"paid": True, "first_byte_timeout_s": 0.3}

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with gateway(
            primary.url, backup[1], cfg, half_open_hedge_s=0.05, **FAST_BREAKER
        ) as gw:
            with pytest.raises(AllProvidersFailed) as info:
                await gw.generate(REQUEST)  # the first caller pays, and is not resent
            seen["first"] = info.value.last
            breaker = gw.router.breakers["primary"]
            seen["kind"] = breaker.probe_kind
            trials: list[ImageResult] = []
            reopenings = []
            for _ in range(3):
                assert await until(lambda: breaker.state == "half_open")
                trials.append(await gw.generate(REQUEST))
                reopenings.append(breaker.reopen_count)
            seen["trials"] = {tuple(outcomes(r)) for r in trials}
            seen["notes"] = [r.attempts[0].note for r in trials]
            seen["reopenings"] = reopenings
            seen["probe_images"] = probe_images(primary)
            primary.set(app(answer))
            assert await until(lambda: breaker.state == "half_open")
            seen["healed"] = (await gw.generate(REQUEST)).provider
            seen["closed"] = breaker.state
        return seen

    seen = asyncio.run(scenario())
    assert isinstance(seen["first"], Timeout)
    assert seen["first"].stage == "first_byte"
    assert seen["kind"] == "metadata"
    assert seen["trials"] == {("primary:cancelled", "backup:ok")}
    assert all("hedged after" in (note or "") for note in seen["notes"])
    assert seen["reopenings"] == sorted(seen["reopenings"])
    assert seen["reopenings"][-1] > seen["reopenings"][0]
    assert seen["probe_images"] == 0
    assert seen["healed"] == "primary"
    assert seen["closed"] == "closed"


def test_tls_failure_is_probed_by_a_handshake_not_a_generation(
    fault_server: Factory, backup: tuple[OpenAIFake, str]
) -> None:
    """A refused connection opens the breaker with a handshake probe: no image is generated."""
    primary = fault_server(app(answer))
    url = primary.url
    primary.stop()

    async def scenario() -> str:
        async with gateway(url, backup[1], {"paid": False}) as gw:
            await gw.generate(REQUEST)
            return gw.router.breakers["primary"].probe_kind

    assert asyncio.run(scenario()) == "handshake"


def test_server_shows_learned_latency_and_the_doctor_notes_the_learned_limit(
    backup: tuple[OpenAIFake, str],
) -> None:
    """GET /v1/providers: p50/p95/p99 per shape and effective timeouts; the doctor notes them."""
    settings = parse_settings(
        {
            "gateway": {"route": ["oai"], "learn_min_samples": 3},
            "providers": {
                "oai": {"type": "openai", "url": f"{backup[1]}/v1", "api_key_env": CANARY_ENV}
            },
        }
    )
    body = {"prompt": "x", "size": "256x256"}
    with live(settings) as server:
        for _ in range(3):
            httpx.post(f"{server.url}/v1/images/generations", json=body, timeout=10)
        row = httpx.get(f"{server.url}/v1/providers", timeout=10).json()["data"][0]
        checked = httpx.get(f"{server.url}/v1/providers?doctor=true", timeout=10).json()
    (learned,) = row["learned"]
    assert learned["shape"] == "~256x256, default steps"
    assert learned["total"]["samples"] == 3
    assert set(learned["first_byte"]) == {"samples", "p50_s", "p95_s", "p99_s"}
    assert learned["first_byte_timeout_learned"] is True
    assert learned["first_byte_timeout_s"] < row["timeouts"]["first_byte_s"] == 120
    assert learned["hedge_after_s"] is None  # a paid provider is not hedged
    notes = checked["data"][0]["doctor"]["notes"]
    assert any("learned a first-byte limit" in note for note in notes)
