"""The router: one request, an ordered route of providers, and no way to hang.

It owns the only retry loop in imagegate. For each request it walks the route in order,
skipping providers whose circuit breaker is open, and records every attempt. A failure moves
on to the next provider at once (failover); when the route is exhausted, providers that failed
with a retryable error get another try after a full-jitter exponential backoff, as long as the
shared retry budget, ``max_attempts`` and the request's deadline allow. Breakers open on
failures and are closed only by a background probe, never by a user request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from imagegate.config import GatewaySettings
from imagegate.errors import (
    AllProvidersFailed,
    AuthError,
    ConnectError,
    ContentFiltered,
    ImagegateError,
    InvalidRequest,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Timeout,
    Unavailable,
)
from imagegate.hedging import SendGate, current_gate
from imagegate.providers.base import Deadline, ProgressCallback, Provider
from imagegate.request import Attempt, AttemptError, GeneratedImage, ImageRequest

BreakerState = Literal["closed", "open"]

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
PROBE_DEADLINE_S = 10.0


@dataclass
class Breaker:
    """The circuit breaker of one provider; only the background probe closes it."""

    open_s: float = 2.0
    max_open_s: float = 60.0
    consecutive_limit: int = 3
    window: int = 20
    rate_limit: float = 0.5
    state: BreakerState = "closed"
    opened_until: float = 0.0
    reopen_count: int = 0
    consecutive: int = 0
    last_error: str | None = None
    last_probe_at: datetime | None = None
    last_probe_ok: bool | None = None
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    def record_success(self) -> None:
        self.consecutive = 0
        self.outcomes.append(True)

    def record_failure(self, error: ProviderError) -> bool:
        """Count a failure; True when this failure opened the breaker."""
        self.consecutive += 1
        self.outcomes.append(False)
        self.last_error = f"{type(error).__name__}: {error.message}"
        failures = self.outcomes.count(False)
        tripped = (
            _unreachable(error)
            or self.consecutive >= self.consecutive_limit
            or (
                len(self.outcomes) >= self.window // 2
                and failures / len(self.outcomes) >= self.rate_limit
            )
        )
        if tripped and not self.is_open:
            self.open(error.retry_after)
            return True
        return False

    def open(self, retry_after: float | None = None) -> None:
        wait = min(self.max_open_s, self.open_s * 2**self.reopen_count)
        if retry_after is not None:
            wait = max(wait, retry_after)
        self.state = "open"
        self.opened_until = time.monotonic() + wait
        self.reopen_count += 1

    def close(self) -> None:
        self.state = "closed"
        self.reopen_count = 0
        self.consecutive = 0
        self.outcomes.clear()


def _unreachable(error: ProviderError) -> bool:
    """Failures that open the breaker at once: the provider cannot serve anyone right now.

    A timeout is one of them whatever its stage: it costs the caller a whole budget, so the
    next request must not pay it again. The probe puts a provider that was only slow back
    on the route as soon as it answers.
    """
    return isinstance(
        error, Timeout | ConnectError | Unavailable | RateLimited | AuthError | QuotaExceeded
    )


def _counts_against_provider(error: ProviderError) -> bool:
    """A caller's bad request or a content filter says nothing about the provider's health."""
    return not isinstance(error, InvalidRequest | ContentFiltered)


class RetryBudget:
    """Retries allowed as a fraction of requests (a token bucket, as Envoy and gRPC do)."""

    def __init__(self, ratio: float, initial: float = 2.0, cap: float = 10.0) -> None:
        self.ratio = ratio
        self.tokens = initial
        self.cap = cap

    def on_request(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class RouteResult:
    """What the router hands back to the gateway on success."""

    images: list[GeneratedImage]
    provider: Provider
    attempts: list[Attempt]


def backoff_s(retry: int, retry_after: float | None, rand: Callable[[], float]) -> float:
    """Full-jitter exponential backoff, never shorter than the provider's Retry-After."""
    wait: float = rand() * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retry)
    return max(wait, retry_after or 0.0)


class Router:
    """Deadlines, failover, retries within a budget, and a breaker per provider."""

    def __init__(
        self,
        settings: GatewaySettings,
        providers: Mapping[str, Provider],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.breakers = {name: Breaker() for name in providers}
        self.slots = {
            name: asyncio.Semaphore(provider.config.concurrency)
            for name, provider in providers.items()
        }
        self.budget = RetryBudget(settings.retry_budget)
        self._sleep = sleep
        self._rand = rand
        self._probes: dict[str, asyncio.Task[None]] = {}
        self.on_breaker: Callable[[str], None] | None = None
        """Called with a provider's name when its breaker opens or closes here (shared state)."""

    def apply_shared(
        self, name: str, state: str, opened_until: datetime | None, last_error: str | None
    ) -> None:
        """Apply a breaker change another process saw; an open one is probed from here too."""
        breaker = self.breakers.get(name)
        if breaker is None:
            return
        if state == "closed" and breaker.is_open:
            breaker.close()
        elif state == "open" and opened_until is not None and not breaker.is_open:
            breaker.open(max(0.0, (opened_until - datetime.now(UTC)).total_seconds()))
            breaker.last_error = last_error
            self._start_probe(name)

    async def run(
        self,
        request: ImageRequest,
        route: list[str],
        deadline: Deadline,
        progress: ProgressCallback | None = None,
        *,
        policy: GatewaySettings | None = None,
    ) -> RouteResult:
        """Generate on the first provider of ``route`` that can, recording every attempt.

        ``policy`` (a named route's settings) replaces the router's own ``max_attempts``,
        hedging and failover settings for this request.
        """
        policy = policy or self.settings
        self.budget.on_request()
        attempts: list[Attempt] = []
        failed: list[tuple[str, ProviderError]] = []
        queue = list(route)
        retries = 0
        while queue and sum(a.outcome != "skipped" for a in attempts) < policy.max_attempts:
            name = queue.pop(0)
            breaker = self.breakers[name]
            if breaker.is_open:
                why = f"circuit breaker open after {breaker.last_error}"
                attempts.append(_skipped(name, why, "CircuitOpen"))
                continue
            if deadline.expired:
                attempts.append(_skipped(name, "the request deadline had passed", "DeadlinePassed"))
                break
            started = time.monotonic()
            try:
                outcomes = await self._try(name, queue, request, deadline, progress, policy)
            except asyncio.CancelledError:
                attempts.append(
                    Attempt(provider=name, outcome="cancelled", elapsed_s=_since(started))
                )
                raise
            for outcome in outcomes:
                if outcome.cancelled:  # lost a request-hedging race: slow, so counted
                    attempts.append(
                        Attempt(
                            provider=outcome.name,
                            outcome="cancelled",
                            error=_attempt_error(outcome.error) if outcome.error else None,
                            elapsed_s=_since(outcome.started),
                        )
                    )
                    if outcome.error is not None:
                        self._record_failure(outcome.name, outcome.error)
                    continue
                if outcome.error is None:
                    self.breakers[outcome.name].record_success()
                    attempts.append(
                        Attempt(provider=outcome.name, outcome="ok", elapsed_s=outcome.elapsed_s)
                    )
                    return RouteResult(
                        images=outcome.images,
                        provider=self.providers[outcome.name],
                        attempts=attempts,
                    )
                exc = outcome.error
                attempts.append(_failed(outcome.name, exc, outcome.started))
                failed.append((outcome.name, exc))
                self._record_failure(outcome.name, exc)
                if not exc.failover:
                    raise _stop(exc, attempts) from exc
                if (
                    self.providers[outcome.name].paid
                    and exc.may_have_been_billed
                    and not policy.failover_after_send
                ):
                    raise _not_resent(outcome.name, exc, attempts) from exc
            if not queue and deadline.remaining() > 0:
                retry = self._next_retry(failed, retries, deadline)
                if retry is not None:
                    retry_name, wait = retry
                    retries += 1
                    await self._sleep(wait)
                    queue.append(retry_name)
        raise _all_failed(route, attempts, failed)

    def _record_failure(self, name: str, exc: ProviderError) -> None:
        if _counts_against_provider(exc) and self.breakers[name].record_failure(exc):
            self._start_probe(name)
            if self.on_breaker is not None:
                self.on_breaker(name)

    async def _try(
        self,
        name: str,
        queue: list[str],
        request: ImageRequest,
        deadline: Deadline,
        progress: ProgressCallback | None,
        policy: GatewaySettings,
    ) -> list[_Outcome]:
        """One attempt on ``name``, raced against the next provider when it lags.

        Connect hedging: when ``name`` has not finished connecting after
        ``hedge_connect_after_s``, the next provider on the route starts connecting too;
        the first connected sends the request, the other is dropped before it sends anything.
        Request hedging (``hedge_after_s``, unpaid providers only): when the answer lags, the
        next unpaid provider gets the whole request as well and the first good answer wins.
        """
        hedge_s = policy.hedge_connect_after_s
        remote = self.providers[name].endpoint() is not None
        first = self._start(name, request, deadline, progress, granted=not (hedge_s and remote))
        running = [first]
        try:
            outcomes: list[_Outcome] = []
            winner: _Contender | None = first
            if not first.gate.granted.is_set():
                await _first_of([first.gate.connected.wait(), first.task], hedge_s)
                if not (first.gate.connected.is_set() or first.task.done()):
                    second = self._next_contender(queue, request, deadline, progress)
                    if second is not None:
                        running.append(second)
                        outcomes, winner = await _handshake_race(first, second)
                if winner is not None:
                    winner.gate.grant()
            if winner is None:
                return outcomes
            running = [winner]
            if policy.hedge_after_s > 0 and not self.providers[winner.name].paid:
                await _first_of([winner.task], policy.hedge_after_s)
                other = None
                if not winner.task.done():
                    other = self._next_contender(
                        queue, request, deadline, progress, granted=True, unpaid=True
                    )
                if other is not None:
                    running.append(other)
                    return outcomes + await _answer_race(winner, other)
            return [*outcomes, await winner.outcome()]
        except asyncio.CancelledError:
            for contender in running:
                await contender.drop()
            raise

    def _start(
        self,
        name: str,
        request: ImageRequest,
        deadline: Deadline,
        progress: ProgressCallback | None,
        *,
        granted: bool,
    ) -> _Contender:
        provider = self.providers[name]
        gate = SendGate(granted=granted or provider.endpoint() is None)
        if provider.endpoint() is None:
            gate.connected.set()  # nothing to connect: ready at once

        async def attempt() -> list[GeneratedImage]:
            current_gate.set(gate)  # this task's own context
            return await _bounded(provider, self.slots[name], request, deadline, progress)

        task = asyncio.get_running_loop().create_task(attempt(), name=f"imagegate-{name}")
        return _Contender(name=name, gate=gate, task=task, started=time.monotonic())

    def _next_contender(
        self,
        queue: list[str],
        request: ImageRequest,
        deadline: Deadline,
        progress: ProgressCallback | None,
        *,
        granted: bool = False,
        unpaid: bool = False,
    ) -> _Contender | None:
        """Start the next provider on the route whose breaker is closed, taking it off."""
        for index, name in enumerate(queue):
            if self.breakers[name].is_open:
                continue
            if unpaid and self.providers[name].paid:
                return None
            del queue[index]
            return self._start(name, request, deadline, progress, granted=granted)
        return None

    def _next_retry(
        self, failed: list[tuple[str, ProviderError]], retries: int, deadline: Deadline
    ) -> tuple[str, float] | None:
        """The provider to try again and how long to wait first, when anything is allowed."""
        for name, exc in failed:
            if not exc.retryable or self.breakers[name].is_open:
                continue
            wait = backoff_s(retries, exc.retry_after, self._rand)
            if wait >= deadline.remaining() or not self.budget.try_spend():
                return None
            return name, wait
        return None

    def _start_probe(self, name: str) -> None:
        task = self._probes.get(name)
        if task is None or task.done():
            self._probes[name] = asyncio.get_running_loop().create_task(
                self._probe_until_closed(name), name=f"imagegate-probe-{name}"
            )

    async def _probe_until_closed(self, name: str) -> None:
        """Probe an open provider in the background until it answers, then close its breaker."""
        breaker = self.breakers[name]
        provider = self.providers[name]
        while breaker.is_open:
            await self._sleep(max(0.0, breaker.opened_until - time.monotonic()))
            breaker.last_probe_at = datetime.now(UTC)
            try:
                await provider.probe(Deadline(PROBE_DEADLINE_S))
            except ImagegateError as exc:  # a provider error, or a missing extra
                breaker.last_probe_ok = False
                breaker.last_error = f"{type(exc).__name__}: {exc.message}"
                breaker.open(getattr(exc, "retry_after", None))
            else:
                breaker.last_probe_ok = True
                breaker.close()
                if self.on_breaker is not None:
                    self.on_breaker(name)

    async def aclose(self) -> None:
        """Stop the background probes."""
        for task in self._probes.values():
            task.cancel()
        for task in self._probes.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probes.clear()


@dataclass
class _Outcome:
    """How one provider's attempt ended: images, an error, or cancelled by a race."""

    name: str
    started: float
    images: list[GeneratedImage] = field(default_factory=list)
    error: ProviderError | None = None
    cancelled: bool = False
    elapsed_s: float = 0.0


@dataclass
class _Contender:
    """One provider's attempt running as a task, with its send gate."""

    name: str
    gate: SendGate
    task: asyncio.Task[list[GeneratedImage]]
    started: float

    async def outcome(self) -> _Outcome:
        """Wait for the attempt; its images or its error."""
        try:
            images = await self.task
        except ProviderError as exc:
            exc.provider = exc.provider or self.name
            if exc.elapsed_s is None:
                exc.elapsed_s = _since(self.started)
            return _Outcome(self.name, self.started, error=exc, elapsed_s=_since(self.started))
        return _Outcome(self.name, self.started, images=images, elapsed_s=_since(self.started))

    async def drop(self) -> None:
        """Cancel the attempt and wait until it has let go of its connection."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ProviderError):
            await self.task

    async def lost_handshake(self, winner: str) -> _Outcome:
        """Drop a contender whose handshake lost the race, reported as a timeout of its stage."""
        stage = self.gate.stage
        await self.drop()
        waited = round(time.monotonic() - self.started, 4)
        error = Timeout(
            f"the {stage} stage had not finished after {waited:.1f} s while {winner} connected, "
            f"so the request went to {winner}; run `imagegate doctor {self.name}` to see why",
            provider=self.name,
            stage=stage,
            elapsed_s=waited,
        )
        return _Outcome(self.name, self.started, error=error, elapsed_s=waited)


async def _first_of(waits: list[Awaitable[Any]], within_s: float) -> None:
    """Wait until one of ``waits`` is done or ``within_s`` passes.

    Helper waits are cancelled afterwards; attempt tasks passed in are left running.
    """
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(futures, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, wait in zip(futures, waits, strict=True):
            if future is not wait:
                future.cancel()


async def _handshake_race(
    first: _Contender, second: _Contender
) -> tuple[list[_Outcome], _Contender | None]:
    """The first contender to connect wins; the other is dropped before it sends anything.

    A contender whose attempt fails before connecting (refused, bad certificate) is reported
    and the other one wins when it connects.
    """
    outcomes: list[_Outcome] = []
    pending = [first, second]
    while pending:
        for contender in [c for c in pending if c.task.done() and not c.gate.connected.is_set()]:
            outcomes.append(await contender.outcome())
            pending.remove(contender)
        connected = [c for c in pending if c.gate.connected.is_set()]
        if connected:
            winner = connected[0]
            for loser in pending:
                if loser is not winner:
                    outcomes.append(await loser.lost_handshake(winner.name))
            return outcomes, winner
        if pending:
            waits: list[Awaitable[Any]] = [c.gate.connected.wait() for c in pending]
            await _first_of([*waits, *(c.task for c in pending)], within_s=3600)
    return outcomes, None


async def _answer_race(first: _Contender, second: _Contender) -> list[_Outcome]:
    """Both have the request; the first good answer wins and the other is cancelled."""
    outcomes: list[_Outcome] = []
    pending = {first.task: first, second.task: second}
    while pending:
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            outcome = await pending.pop(task).outcome()
            if outcome.error is None:
                for other in pending.values():
                    await other.drop()
                    waited = round(time.monotonic() - other.started, 4)
                    slow = Timeout(
                        f"no answer after {waited:.1f} s while {outcome.name} answered, so "
                        f"its request was cancelled; run `imagegate doctor {other.name}`",
                        provider=other.name,
                        stage="first_byte",
                        elapsed_s=waited,
                    )
                    outcomes.append(_Outcome(other.name, other.started, error=slow, cancelled=True))
                return [*outcomes, outcome]
            outcomes.append(outcome)
    return outcomes


async def _bounded(
    provider: Provider,
    slot: asyncio.Semaphore,
    request: ImageRequest,
    deadline: Deadline,
    progress: ProgressCallback | None,
) -> list[GeneratedImage]:
    """One attempt, cut off at the attempt's deadline even if the provider ignores it.

    Waiting for one of the provider's ``concurrency`` slots counts against the same deadline.
    """
    attempt = deadline.within(provider.config.timeout_s)
    started = time.monotonic()
    try:
        async with asyncio.timeout(attempt.remaining()), slot:
            return await provider.generate(request, attempt, progress)
    except TimeoutError:
        raise Timeout(
            f"no answer within the attempt's {time.monotonic() - started:.1f} s budget; raise "
            f"providers.{provider.name}.timeout_s or gateway.deadline_s if it needs longer",
            provider=provider.name,
            stage="total",
            elapsed_s=time.monotonic() - started,
        ) from None


def _since(started: float) -> float:
    return round(time.monotonic() - started, 4)


def _skipped(name: str, why: str, kind: str) -> Attempt:
    return Attempt(
        provider=name,
        outcome="skipped",
        error=AttemptError(type=kind, message=why),
        elapsed_s=0.0,
    )


def _attempt_error(exc: ProviderError) -> AttemptError:
    return AttemptError(type=type(exc).__name__, stage=exc.stage, message=exc.message, fix=exc.fix)


def _failed(name: str, exc: ProviderError, started: float) -> Attempt:
    return Attempt(
        provider=name, outcome="error", error=_attempt_error(exc), elapsed_s=_since(started)
    )


def _stop(exc: ProviderError, attempts: list[Attempt]) -> ProviderError:
    exc.attempts = list(attempts)
    return exc


def _not_resent(name: str, exc: ProviderError, attempts: list[Attempt]) -> AllProvidersFailed:
    return AllProvidersFailed(
        f"{name} failed after it received the request ({type(exc).__name__}: {exc.message}); "
        f"it is a paid provider and may have billed the attempt, so the request was not sent "
        f"elsewhere. Set gateway.failover_after_send = true to allow that.",
        attempts,
        last=exc,
        fix="Set gateway.failover_after_send = true to allow that.",
    )


def _all_failed(
    route: list[str], attempts: list[Attempt], failed: list[tuple[str, ProviderError]]
) -> Exception:
    if failed and all(isinstance(exc, InvalidRequest) for _, exc in failed):
        return _stop(failed[0][1], attempts)
    reasons = "; ".join(
        f"{a.provider}: {a.error.type}" + (f" ({a.error.stage})" if a.error.stage else "")
        for a in attempts
        if a.error is not None
    )
    return AllProvidersFailed(
        f"every provider on the route {route} failed: {reasons or 'nothing was tried'}. "
        "Run `imagegate doctor` to see why and what to do.",
        attempts,
        last=failed[-1][1] if failed else None,
        fix="Run `imagegate doctor` to see why and what to do.",
    )
