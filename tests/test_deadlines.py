"""Deadlines the caller feels: a synchronous request's time in the queue counts; a job's not."""

from __future__ import annotations

import asyncio

import pytest
from serverkit import Fake

from imagegate.config import GatewaySettings, ProviderConfig, Settings
from imagegate.errors import AllProvidersFailed, ImagegateError, Timeout
from imagegate.gateway import Gateway
from imagegate.request import ImageRequest, ImageResult

REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=64)


def _run(
    provider: Fake,
    *,
    queued_s: float,
    caller_waits: bool,
    deadline_s: float = 180.0,
    max_queue_wait_s: float | None = None,
) -> ImageResult:
    gateway = GatewaySettings(
        route=["a"], max_attempts=1, deadline_s=deadline_s, max_queue_wait_s=max_queue_wait_s
    )
    settings = Settings(
        gateway=gateway,
        providers={"a": ProviderConfig(type="fake")},
    )

    async def main() -> ImageResult:
        async with Gateway(settings, store=False, providers={"a": provider}) as gw:
            return await gw.execute("job", REQUEST, queued_s=queued_s, caller_waits=caller_waits)

    return asyncio.run(main())


def _timed_out(exc: ImagegateError) -> bool:
    last = exc.last if isinstance(exc, AllProvidersFailed) else exc
    return isinstance(last, Timeout) and last.stage == "total"


def test_a_synchronous_request_counts_its_time_in_the_queue() -> None:
    """deadline_s 1, 0.8 s queued, a 0.5 s provider: the caller's deadline passes."""
    with pytest.raises(ImagegateError) as caught:
        _run(Fake("a", delay_s=0.5), queued_s=0.8, caller_waits=True, deadline_s=1.0)
    assert _timed_out(caught.value)


def test_a_job_counts_its_deadline_from_when_it_starts() -> None:
    """The same wait for a queued job leaves it its whole deadline_s."""
    result = _run(Fake("a", delay_s=0.5), queued_s=0.8, caller_waits=False, deadline_s=1.0)
    assert result.provider == "a"


def test_a_request_whose_wait_used_its_deadline_does_not_run() -> None:
    """Queued past its whole deadline_s, a synchronous request fails at once, unsent."""
    provider = Fake("a")
    with pytest.raises(Timeout, match=r"waited 2\.0 s in the queue"):
        _run(provider, queued_s=2.0, caller_waits=True, deadline_s=1.0)
    assert provider.calls == 0


def test_a_job_queued_past_max_queue_wait_fails_with_the_reason() -> None:
    """gateway.max_queue_wait_s: a job that waited longer fails without running, and says why."""
    provider = Fake("a")
    with pytest.raises(Timeout, match="max_queue_wait_s") as caught:
        _run(provider, queued_s=5.0, caller_waits=False, max_queue_wait_s=2.0)
    assert provider.calls == 0
    assert caught.value.fix is not None
