"""The story imagegate exists for, as tests: a Space that stalls or sleeps never holds a caller.

An app called Hugging Face Gradio Spaces through gradio_client; every call died in the TLS
handshake after 10-30 s although the Spaces were RUNNING. With imagegate the same route
(``space``, then a paid API, then the local model) answers from the next provider within
seconds and says why the Space was passed over; a sleeping Space is woken in the background
while other providers serve, and rejoins the route once it runs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from vendor_gradio import FakeHub, gradio_app
from vendor_novita import NovitaFake

from imagegate.config import parse_settings
from imagegate.gateway import Gateway
from imagegate.request import ImageRequest, ImageResult

STORY_STALL_S = 10.0  # the shortest hang the story describes


def local(tiny_model: Path) -> dict[str, Any]:
    """The tiny local pipeline, small and quick."""
    return {"type": "diffusers", "model": str(tiny_model), "vae": "full", "steps": 2}


def test_space_stalled_in_tls_is_passed_over_for_novita_within_seconds(
    tls_stall: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Route [space, novita, local] with the Space's TLS stalled: novita answers in < 5 s.

    The first attempt explains the Space: a Timeout in the tls stage.
    """
    monkeypatch.setenv("NOVITA_API_KEY", "sk-novita-test-key-0123456789")
    with NovitaFake() as novita:
        settings = parse_settings(
            {
                "gateway": {"route": ["space", "novita", "local"], "deadline_s": 60},
                "providers": {
                    "space": {"type": "gradio", "url": tls_stall},
                    "novita": {"type": "novita", "url": novita.url, "poll_interval_s": 0.05},
                    "local": local(tiny_model),
                },
            }
        )
        request = ImageRequest(prompt="a lighthouse at dusk", width=128, height=128, seed=1)

        async def scenario() -> tuple[ImageResult, float]:
            async with Gateway(settings) as gateway:
                started = time.monotonic()
                result = await gateway.generate(request)
                return result, time.monotonic() - started

        result, elapsed = asyncio.run(scenario())

    assert result.provider == "novita"
    assert elapsed < 5.0 < STORY_STALL_S
    first = result.attempts[0]
    assert first.provider == "space"
    assert first.outcome == "error"
    assert first.error is not None
    assert (first.error.type, first.error.stage) == ("Timeout", "tls")
    assert result.attempts[-1].provider == "novita"
    assert result.attempts[-1].outcome == "ok"


def test_sleeping_space_is_woken_while_local_serves_and_rejoins_once_running(
    tiny_model: Path,
) -> None:
    """SLEEPING: local serves at once, the Space gets a wake request; RUNNING: it serves again.

    No request waits on the wake: the router's background probe closes the Space's breaker.
    """
    app = gradio_app()
    request = ImageRequest(prompt="a lighthouse", width=64, height=64, steps=2, seed=3)
    with FakeHub(host=app.url, stage="SLEEPING") as hub:
        space = {
            "type": "gradio",
            "space": "owner/tiny-space",
            "hub_url": hub.url,
            "wake_retry_after_s": 0.2,
        }
        settings = parse_settings(
            {
                "gateway": {"route": ["space", "local"], "deadline_s": 60},
                "providers": {"space": space, "local": local(tiny_model)},
            }
        )

        async def scenario() -> tuple[ImageResult, bool, bool, ImageResult]:
            async with Gateway(settings) as gateway:
                asleep = await gateway.generate(request)
                breaker = gateway.router.breakers["space"]
                opened = breaker.is_open
                hub.stage = "RUNNING"
                for _ in range(200):  # the probe runs every 2 s or so; wait up to 10 s
                    if not breaker.is_open:
                        break
                    await asyncio.sleep(0.05)
                closed = not breaker.is_open
                awake = await gateway.generate(request)
                return asleep, opened, closed, awake

        asleep, opened, closed, awake = asyncio.run(scenario())

    assert asleep.provider == "local"
    first = asleep.attempts[0]
    assert first.provider == "space"
    assert first.error is not None
    assert (first.error.type, first.error.stage) == ("Unavailable", "runtime")
    assert first.elapsed_s < 1.0  # nobody waited on the wake
    assert app.state.paths("GET", "/config")  # the wake request reached the Space's host
    assert opened
    assert closed
    assert awake.provider == "space"
    assert awake.images[0].seed == 3
