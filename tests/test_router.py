"""The router: failover, retries within a budget, breakers closed by probes, deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from imagegate.config import GatewaySettings
from imagegate.errors import (
    AllProvidersFailed,
    ConnectError,
    ContentFiltered,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    Timeout,
    UpstreamError,
)
from imagegate.providers.base import Deadline, ProgressCallback, Provider, ProviderConfig
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.router import Router, backoff_s

REQUEST = ImageRequest(prompt="a fox")
Behaviour = Callable[[], ProviderError | None]


class Scripted(Provider):
    """A provider whose outcome is set by the test: an error to raise, or success."""

    type = "scripted"

    def __init__(
        self,
        name: str,
        fail: ProviderError | None = None,
        *,
        paid: bool = False,
        hang_s: float = 0.0,
    ) -> None:
        super().__init__(name, ProviderConfig(type="scripted", paid=paid))
        self.fail = fail
        self.hang_s = hang_s
        self.calls = 0
        self.probes = 0

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        self.calls += 1
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.fail is not None:
            raise self.fail
        return [GeneratedImage(png=b"png", width=64, height=64, seed=1)]

    async def probe(self, deadline: Deadline) -> None:
        self.probes += 1
        if self.fail is not None:
            raise self.fail


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def make_router(*providers: Scripted, **settings: object) -> Router:
    cfg = GatewaySettings(route=[p.name for p in providers], **settings)  # type: ignore[arg-type]
    return Router(cfg, {p.name: p for p in providers}, sleep=no_sleep, rand=lambda: 0.5)


async def run(router: Router, deadline_s: float = 5.0) -> list[str]:
    result = await router.run(REQUEST, list(router.providers), Deadline(deadline_s))
    return [f"{a.provider}:{a.outcome}" for a in result.attempts]


def test_first_healthy_provider_serves() -> None:
    """A healthy first provider answers and is the only attempt."""
    router = make_router(Scripted("a"), Scripted("b"))
    assert asyncio.run(run(router)) == ["a:ok"]


def test_refused_primary_fails_over_to_the_next() -> None:
    """A connection failure moves on to the next provider at once."""
    router = make_router(Scripted("a", ConnectError("refused")), Scripted("b"))
    assert asyncio.run(run(router)) == ["a:error", "b:ok"]


def test_open_breaker_skips_the_provider_without_calling_it() -> None:
    """After an unreachable failure, the next request does not touch the provider."""
    dead = Scripted("a", Timeout("stall", stage="tls"))

    async def scenario() -> list[str]:
        router = make_router(dead, Scripted("b"))
        await run(router)
        try:
            return await run(router)
        finally:
            await router.aclose()

    assert asyncio.run(scenario()) == ["a:skipped", "b:ok"]
    assert dead.calls == 1


def test_background_probe_closes_the_breaker_once_the_provider_recovers() -> None:
    """The probe, not a user request, puts a recovered provider back on the route."""
    flaky = Scripted("a", ConnectError("refused"))

    async def scenario() -> list[str]:
        router = make_router(flaky, Scripted("b"))
        await run(router)
        flaky.fail = None
        for _ in range(20):
            await asyncio.sleep(0)
            if not router.breakers["a"].is_open:
                break
        try:
            return await run(router)
        finally:
            await router.aclose()

    assert asyncio.run(scenario()) == ["a:ok"]
    assert flaky.probes >= 1


def test_server_error_opens_the_breaker_only_after_repeated_failures() -> None:
    """One 5xx is retried later; three in a row open the breaker."""
    router = make_router(Scripted("a", UpstreamError("500")), Scripted("b"))

    async def scenario() -> None:
        for _ in range(2):
            await run(router)
        assert not router.breakers["a"].is_open
        await run(router)
        assert router.breakers["a"].is_open
        await router.aclose()

    asyncio.run(scenario())


def test_paid_provider_is_not_resent_after_a_timeout_past_sending() -> None:
    """A first-byte timeout on a paid provider may have been billed: no failover."""
    backup = Scripted("b")
    router = make_router(Scripted("a", Timeout("hang", stage="first_byte"), paid=True), backup)
    with pytest.raises(AllProvidersFailed, match="may have billed"):
        asyncio.run(run(router))
    assert backup.calls == 0


def test_failover_after_send_can_be_allowed() -> None:
    """failover_after_send = true resends to the next provider."""
    router = make_router(
        Scripted("a", Timeout("hang", stage="first_byte"), paid=True),
        Scripted("b"),
        failover_after_send=True,
    )
    assert asyncio.run(run(router)) == ["a:error", "b:ok"]


def test_content_filter_is_not_routed_around() -> None:
    """ContentFiltered stops the request with the provider's verdict."""
    backup = Scripted("b")
    router = make_router(Scripted("a", ContentFiltered("nope")), backup)
    with pytest.raises(ContentFiltered) as info:
        asyncio.run(run(router))
    assert backup.calls == 0
    assert [a.outcome for a in info.value.attempts] == ["error"]


def test_every_provider_failing_raises_all_providers_failed_with_attempts() -> None:
    """The error carries each attempt and names the stages."""
    router = make_router(Scripted("a", ConnectError("x")), Scripted("b", Timeout("y", stage="tls")))
    with pytest.raises(AllProvidersFailed) as info:
        asyncio.run(run(router))
    assert [a.provider for a in info.value.attempts] == ["a", "b"]
    assert "b: Timeout (tls)" in str(info.value)


def test_invalid_request_everywhere_is_the_callers_fault() -> None:
    """When every provider rejects the request, the InvalidRequest itself is raised."""
    router = make_router(Scripted("a", InvalidRequest("bad sampler", field="sampler")))
    with pytest.raises(InvalidRequest):
        asyncio.run(run(router))
    assert not router.breakers["a"].is_open


def test_retryable_failure_is_retried_within_max_attempts() -> None:
    """A lone provider with a 5xx is tried again, up to max_attempts."""
    only = Scripted("a", UpstreamError("500"))
    router = make_router(only, max_attempts=2)
    with pytest.raises(AllProvidersFailed):
        asyncio.run(run(router))
    assert only.calls == 2


def test_dead_backend_costs_at_most_1_2_attempts_per_request() -> None:
    """Over 200 requests the retry budget and breaker keep upstream load bounded."""
    dead = Scripted("a", UpstreamError("500"))
    router = make_router(dead)

    async def scenario() -> None:
        for _ in range(200):
            with pytest.raises(AllProvidersFailed):
                await run(router)
        await router.aclose()

    asyncio.run(scenario())
    assert (dead.calls + dead.probes) / 200 <= 1.2


def test_provider_ignoring_its_deadline_is_cut_off() -> None:
    """A provider that hangs past the deadline ends as Timeout(total), not a hang."""
    router = make_router(Scripted("a", hang_s=5.0))
    with pytest.raises(AllProvidersFailed) as info:
        asyncio.run(run(router, deadline_s=0.2))
    error = info.value.attempts[0].error
    assert error is not None
    assert (error.type, error.stage) == ("Timeout", "total")


def test_backoff_honours_retry_after() -> None:
    """The wait is never shorter than the provider's Retry-After."""
    assert backoff_s(0, 3.0, lambda: 1.0) == 3.0
    assert backoff_s(10, None, lambda: 1.0) == 5.0
    assert backoff_s(2, None, lambda: 0.0) == 0.0


# --------------------------------------------------------------------------- breaker


def test_probe_repeats_the_stage_that_failed() -> None:
    """Handshake for dns/connect/tls; a generation for an unpaid hang or 5xx; else metadata."""
    from imagegate.breaker import probe_kind
    from imagegate.errors import AuthError

    assert probe_kind(Timeout("stall", stage="tls"), paid=False) == "handshake"
    assert probe_kind(ConnectError("refused", stage="connect"), paid=True) == "handshake"
    assert probe_kind(Timeout("hang", stage="first_byte"), paid=False) == "generation"
    assert probe_kind(UpstreamError("500"), paid=False) == "generation"
    assert probe_kind(Timeout("hang", stage="first_byte"), paid=True) == "metadata"
    assert probe_kind(AuthError("401"), paid=False) == "metadata"


def test_open_time_doubles_with_each_reopening_up_to_max_open_s() -> None:
    """2, 4, 8 ... seconds between probes, never more than max_open_s; a close resets it."""
    from imagegate.breaker import Breaker

    breaker = Breaker(open_s=2.0, max_open_s=10.0)
    waits = []
    for _ in range(5):
        before = time.monotonic()
        breaker.open()
        waits.append(round(breaker.opened_until - before))
    assert waits == [2, 4, 8, 10, 10]
    breaker.close()
    breaker.open()
    assert round(breaker.opened_until - time.monotonic()) == 2


def test_paid_failure_after_sending_goes_half_open_and_one_trial_closes_it() -> None:
    """A metadata probe of a paid provider only half-opens; one trial at a time; success closes."""
    from imagegate.breaker import Breaker

    breaker = Breaker(paid=True)
    assert breaker.record_failure(Timeout("hang", stage="first_byte"))
    assert breaker.probe_kind == "metadata"
    assert not breaker.probe_passed("metadata")
    assert breaker.state == "half_open"
    assert breaker.start_trial()
    assert not breaker.start_trial()
    assert breaker.record_success()
    assert not breaker.is_open


def test_failed_trial_opens_the_breaker_again_for_longer() -> None:
    """A half-open trial that fails reopens the breaker, and the next wait is longer."""
    from imagegate.breaker import Breaker

    breaker = Breaker(paid=True)
    breaker.record_failure(Timeout("hang", stage="first_byte"))
    first = breaker.reopen_count
    breaker.probe_passed("metadata")
    breaker.start_trial()
    assert breaker.record_failure(Timeout("hedged", stage="first_byte"), lost_race=True)
    assert breaker.state == "open"
    assert breaker.reopen_count == first + 1


def test_trial_ended_by_the_callers_fault_passes_the_trial_on() -> None:
    """A half-open trial refused for the caller's own prompt leaves the next request the trial."""
    router = make_router(Scripted("a", ContentFiltered("refused"), paid=True), Scripted("b"))
    breaker = router.breakers["a"]
    breaker.state = "half_open"
    with pytest.raises(ContentFiltered):
        asyncio.run(run(router))
    assert breaker.state == "half_open"
    assert not breaker.trial_running


class Buggy(Scripted):
    """A provider that raises a plain exception; ``answered``: after its upstream answered."""

    def __init__(self, name: str, *, answered: bool, paid: bool = False) -> None:
        super().__init__(name, paid=paid)
        self.answered = answered

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        self.calls += 1
        if self.answered and deadline.control is not None:
            deadline.control.stages.update({"connect": 0.001, "first_byte": 0.01})
        raise KeyError("b64_json")


@pytest.mark.parametrize(("answered", "stage"), [(True, "read"), (False, "runtime")])
def test_a_provider_bug_is_a_protocol_error_naming_the_stage(answered: bool, stage: str) -> None:
    """A plain exception from a provider becomes a ProtocolError: stage read once the
    upstream answered, else runtime; a paid one may have billed, so it does not fail over."""
    router = make_router(Buggy("a", answered=answered, paid=True), Scripted("b"))
    with pytest.raises(AllProvidersFailed) as caught:
        asyncio.run(run(router))
    error = caught.value.__cause__
    assert isinstance(error, ProtocolError)
    assert (error.provider, error.stage) == ("a", stage)
    assert f"failed unexpectedly in stage {stage}: KeyError" in error.message
    assert router.providers["b"].calls == 0  # type: ignore[attr-defined]


def test_an_unpaid_provider_bug_fails_over_to_the_next() -> None:
    """An unpaid provider's bug is one failed attempt: the next provider serves."""
    router = make_router(Buggy("a", answered=True), Scripted("b"))
    assert asyncio.run(run(router)) == ["a:error", "b:ok"]
