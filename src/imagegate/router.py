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
from typing import Literal

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
    """Failures that say the provider cannot serve anyone right now."""
    if isinstance(error, Timeout):
        return error.stage in ("dns", "connect", "tls")
    return isinstance(error, ConnectError | Unavailable | RateLimited | AuthError | QuotaExceeded)


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

    async def run(
        self,
        request: ImageRequest,
        route: list[str],
        deadline: Deadline,
        progress: ProgressCallback | None = None,
    ) -> RouteResult:
        """Generate on the first provider of ``route`` that can, recording every attempt."""
        self.budget.on_request()
        attempts: list[Attempt] = []
        failed: list[tuple[str, ProviderError]] = []
        queue = list(route)
        retries = 0
        while (
            queue
            and len([a for a in attempts if a.outcome != "skipped"]) < self.settings.max_attempts
        ):
            name = queue.pop(0)
            provider = self.providers[name]
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
                images = await _bounded(provider, self.slots[name], request, deadline, progress)
            except ProviderError as exc:
                exc.provider = exc.provider or name
                exc.elapsed_s = exc.elapsed_s if exc.elapsed_s is not None else _since(started)
                attempts.append(_failed(name, exc, started))
                failed.append((name, exc))
                if _counts_against_provider(exc) and breaker.record_failure(exc):
                    self._start_probe(name)
                if not exc.failover:
                    raise _stop(exc, attempts) from exc
                if (
                    provider.paid
                    and exc.may_have_been_billed
                    and not self.settings.failover_after_send
                ):
                    raise _not_resent(name, exc, attempts) from exc
                if not queue and deadline.remaining() > 0:
                    retry = self._next_retry(failed, retries, deadline)
                    if retry is not None:
                        retry_name, wait = retry
                        retries += 1
                        await self._sleep(wait)
                        queue.append(retry_name)
                continue
            except asyncio.CancelledError:
                attempts.append(
                    Attempt(provider=name, outcome="cancelled", elapsed_s=_since(started))
                )
                raise
            breaker.record_success()
            attempts.append(Attempt(provider=name, outcome="ok", elapsed_s=_since(started)))
            return RouteResult(images=images, provider=provider, attempts=attempts)
        raise _all_failed(route, attempts, failed)

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

    async def aclose(self) -> None:
        """Stop the background probes."""
        for task in self._probes.values():
            task.cancel()
        for task in self._probes.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probes.clear()


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


def _failed(name: str, exc: ProviderError, started: float) -> Attempt:
    return Attempt(
        provider=name,
        outcome="error",
        error=AttemptError(type=type(exc).__name__, stage=exc.stage, message=exc.message),
        elapsed_s=_since(started),
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
    )
