"""The router: one request, an ordered route of providers, and no way to hang.

It owns the only retry loop in imagegate. For each request it walks the route in order,
skipping providers whose circuit breaker is open (imagegate.breaker), and records every
attempt. A failure moves on to the next provider at once (failover); when the route is
exhausted, providers that failed with a retryable error get another try after a full-jitter
exponential backoff, as long as the shared retry budget, ``max_attempts`` and the request's
deadline allow. Breakers open on failures and are closed only by a background probe that tests
what failed, or by a half-open breaker's trial request.

The router also remembers how fast each provider answers each shape of request
(imagegate.latency) and uses it (imagegate.hedging): an unpaid provider that lags past its p95
is hedged, and a first byte far past its p99 is a hang. Each such decision is written into the
attempts' ``note``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from imagegate import tracing
from imagegate.breaker import Breaker, counts_against_provider, run_probe
from imagegate.config import GatewaySettings
from imagegate.errors import (
    AllProvidersFailed,
    ImagegateError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    Stage,
    Timeout,
)
from imagegate.hedging import (
    AttemptControl,
    Contender,
    HangLimit,
    Learned,
    Outcome,
    SendGate,
    answer_race,
    first_of,
    handshake_race,
    hang_limit,
    hedge_after,
)
from imagegate.latency import LatencyMemory, Shape, shape_of
from imagegate.providers.base import Deadline, ProgressCallback, Provider, ProviderConfig
from imagegate.request import Attempt, AttemptError, GeneratedImage, ImageRequest
from imagegate.request import Outcome as AttemptOutcome

log = logging.getLogger("imagegate.router")

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
PROBE_DEADLINE_S = 10.0


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


@dataclass
class _Walk:
    """One request on its way along the route: what is left to try and what happened."""

    request: ImageRequest
    deadline: Deadline
    progress: ProgressCallback | None
    policy: GatewaySettings
    """The router's settings, or a named route's that replace them for this request."""
    shape: Shape
    queue: list[str]
    attempts: list[Attempt] = field(default_factory=list)
    failed: list[tuple[str, ProviderError]] = field(default_factory=list)
    retries: int = 0

    @property
    def tried(self) -> int:
        return sum(a.outcome != "skipped" for a in self.attempts)

    def skip(self, name: str, why: str, kind: str) -> None:
        self.attempts.append(
            Attempt(
                provider=name,
                outcome="skipped",
                error=AttemptError(type=kind, message=why),
                elapsed_s=0.0,
            )
        )


class Router:
    """Deadlines, failover, retries within a budget, a breaker and a latency memory per provider."""

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
        self.breakers = {
            name: Breaker(
                paid=provider.paid,
                open_s=settings.breaker_open_s,
                max_open_s=max(settings.breaker_open_s, settings.breaker_max_open_s),
            )
            for name, provider in providers.items()
        }
        self.latency = LatencyMemory()
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

    # -- one request, step by step -------------------------------------------------------

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
        self.budget.on_request()
        policy = policy or self.settings
        walk = _Walk(request, deadline, progress, policy, shape_of(request), list(route))
        self._capable(walk)
        while walk.queue and walk.tried < policy.max_attempts:
            name = walk.queue.pop(0)
            admitted = self._admit(name, walk)
            if admitted is None:
                continue
            if deadline.expired:
                self._release_trial(name, admitted)
                walk.skip(name, "the request deadline had passed", "DeadlinePassed")
                break
            outcomes = await self._attempt(name, walk, trial=admitted)
            result = self._settle(outcomes, walk)
            if result is not None:
                return result
            await self._retry_later(walk)
        raise _all_failed(route, walk.attempts, walk.failed)

    def _capable(self, walk: _Walk) -> None:
        """Skip the providers that cannot do the request's task (an edit, say), each recorded
        with the reason; InvalidRequest naming the route when none on it can."""
        task = walk.request.task
        able = [name for name in walk.queue if task in self.providers[name].capabilities]
        if not able:
            raise InvalidRequest(
                f"route: no provider on the route ({', '.join(walk.queue)}) can do {task}; "
                "add one that can to the route, or pick another route",
                field="route",
                limit=f"a route with a provider that can do {task}",
            )
        for name in walk.queue:
            if name not in able:
                does = ", ".join(sorted(self.providers[name].capabilities))
                walk.skip(name, f"{name} cannot do {task} (it does {does})", "Unsupported")
        walk.queue = able

    def _admit(self, name: str, walk: _Walk) -> bool | None:
        """Whether ``name`` may be tried: None (skipped), False (normally), True (as a trial)."""
        breaker = self.breakers[name]
        if not breaker.is_open:
            return False
        if not walk.deadline.expired and breaker.start_trial():
            return True
        why = f"circuit breaker {breaker.state.replace('_', '-')} after {breaker.last_error}"
        if breaker.state == "half_open":
            why += "; another request is its trial"
        walk.skip(name, why, "CircuitOpen")
        return None

    def _release_trial(self, name: str, trial: bool) -> None:
        if trial:
            self.breakers[name].abandon_trial()

    async def _attempt(self, name: str, walk: _Walk, *, trial: bool) -> list[Outcome]:
        """Try ``name`` (raced against the next provider when it lags); a cancel is recorded."""
        started = time.monotonic()
        try:
            return await self._race(name, walk, trial)
        except BaseException as exc:  # cancelled, or a bug: the next request takes the trial
            self._release_trial(name, trial)
            if isinstance(exc, asyncio.CancelledError):
                walk.attempts.append(
                    Attempt(provider=name, outcome="cancelled", elapsed_s=_since(started))
                )
            raise

    def _settle(self, outcomes: list[Outcome], walk: _Walk) -> RouteResult | None:
        """Record each outcome (breakers, latency, attempts); the result when one succeeded.

        Raises at once when a failure must not fail over: a content filter, or a paid
        provider that may have billed the attempt.
        """
        for outcome in outcomes:
            if outcome.cancelled:  # lost a request-hedging race: slow, so counted
                walk.attempts.append(_attempt_record(outcome, "cancelled"))
                self.latency.observe_lower_bound(outcome.name, walk.shape, outcome.elapsed_s)
                if outcome.error is not None:
                    self._record_failure(
                        outcome.name, outcome.error, lost_race=outcome.slow_is_expected
                    )
                continue
            if outcome.error is None:
                self.latency.observe(
                    outcome.name, walk.shape, outcome.elapsed_s, outcome.control.first_byte_s
                )
                if self.breakers[outcome.name].record_success():
                    self._breaker_changed(outcome.name)
                walk.attempts.append(_attempt_record(outcome, "ok"))
                return RouteResult(
                    images=outcome.images,
                    provider=self.providers[outcome.name],
                    attempts=walk.attempts,
                )
            exc = outcome.error
            walk.attempts.append(_attempt_record(outcome, "error"))
            walk.failed.append((outcome.name, exc))
            self._record_failure(outcome.name, exc)
            if not exc.failover:
                raise _stop(exc, walk.attempts) from exc
            if (
                self.providers[outcome.name].paid
                and exc.may_have_been_billed
                and not walk.policy.failover_after_send
            ):
                raise _not_resent(outcome.name, exc, walk.attempts) from exc
        return None

    async def _retry_later(self, walk: _Walk) -> None:
        """Once the route is used up, queue a retry after its backoff, if anything allows."""
        if walk.queue or walk.deadline.remaining() <= 0:
            return
        retry = self._next_retry(walk.failed, walk.retries, walk.deadline)
        if retry is not None:
            name, wait = retry
            walk.retries += 1
            await self._sleep(wait)
            walk.queue.append(name)

    def _record_failure(self, name: str, exc: ProviderError, *, lost_race: bool = False) -> None:
        if not counts_against_provider(exc):  # the caller's fault: no verdict on a trial
            self.breakers[name].abandon_trial()
            return
        if self.breakers[name].record_failure(exc, lost_race=lost_race):
            self._start_probe(name)
            self._breaker_changed(name)

    def _breaker_changed(self, name: str) -> None:
        if self.on_breaker is not None:
            self.on_breaker(name)

    # -- one attempt, and its races ------------------------------------------------------

    async def _race(self, name: str, walk: _Walk, trial: bool) -> list[Outcome]:
        """One attempt on ``name``, raced against the next provider when it lags.

        Connect hedging: when ``name`` has not finished connecting after
        ``hedge_connect_after_s``, the next provider on the route starts connecting too;
        the first connected sends the request, the other is dropped before it sends anything.
        Request hedging (unpaid providers, and a half-open breaker's trial): when the answer
        lags past ``hedge_after`` (imagegate.hedging), the next provider gets the whole
        request as well and the first good answer wins.
        """
        hedge_s = walk.policy.hedge_connect_after_s
        remote = self.providers[name].endpoint() is not None
        first = self._start(name, walk, granted=not (hedge_s and remote))
        running = [first]
        try:
            outcomes, winner = await self._connect_race(first, walk)
            if winner is None:
                return outcomes
            running = [winner]
            is_trial = trial and winner.name == name
            plan = self._hedge_plan(winner.name, walk, trial=is_trial)
            if plan is not None:
                await first_of([winner.task], plan.after_s)
                if not winner.task.done():
                    other = self._next_contender(walk, granted=True, unpaid=not is_trial)
                    if other is not None:
                        running.append(other)
                        winner.slow_is_expected = plan.from_history
                        winner.note = f"hedged after {plan.after_s:.2f} s ({plan.why})"
                        other.note = (
                            f"hedge for {winner.name}, which had not answered after "
                            f"{plan.after_s:.2f} s ({plan.why})"
                        )
                        return outcomes + await answer_race(winner, other)
            return [*outcomes, await winner.outcome()]
        except asyncio.CancelledError:
            for contender in running:
                await contender.drop()
            raise

    async def _connect_race(
        self, first: Contender, walk: _Walk
    ) -> tuple[list[Outcome], Contender | None]:
        """Connect hedging: the contender that may send (None when every one failed)."""
        if first.gate.granted.is_set():
            return [], first
        await first_of([first.gate.connected.wait(), first.task], walk.policy.hedge_connect_after_s)
        outcomes: list[Outcome] = []
        winner: Contender | None = first
        if not (first.gate.connected.is_set() or first.task.done()):
            second = self._next_contender(walk)
            if second is not None:
                try:
                    outcomes, winner = await handshake_race(first, second)
                except asyncio.CancelledError:
                    await second.drop()
                    raise
        if winner is not None:
            winner.gate.grant()
        return outcomes, winner

    def _hedge_plan(self, name: str, walk: _Walk, *, trial: bool) -> Learned | None:
        """When to start the next provider beside ``name``: unpaid providers and trials only."""
        if not trial and self.providers[name].paid:
            return None
        return hedge_after(walk.policy, self.latency.of(name, walk.shape), trial=trial)

    def _start(self, name: str, walk: _Walk, *, granted: bool) -> Contender:
        provider = self.providers[name]
        local = provider.endpoint() is None
        gate = SendGate(granted=granted or local)
        if local:
            gate.connected.set()  # nothing to connect: ready at once
        learned = hang_limit(
            walk.policy, self.latency.of(name, walk.shape), _first_byte_budget(provider)
        )
        control = AttemptControl(gate=gate, hang=learned)
        deadline = Deadline(0, control)
        deadline.at = walk.deadline.at
        task = asyncio.get_running_loop().create_task(
            _bounded(provider, self.slots[name], walk.request, deadline, walk.progress),
            name=f"imagegate-{name}",
        )
        return Contender(name=name, control=control, task=task, started=time.monotonic())

    def _next_contender(
        self, walk: _Walk, *, granted: bool = False, unpaid: bool = False
    ) -> Contender | None:
        """Start the next provider on the route whose breaker is closed, taking it off."""
        for index, name in enumerate(walk.queue):
            if self.breakers[name].is_open:
                continue
            if unpaid and self.providers[name].paid:
                return None
            del walk.queue[index]
            return self._start(name, walk, granted=granted)
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

    # -- background probes ---------------------------------------------------------------

    def _start_probe(self, name: str) -> None:
        task = self._probes.get(name)
        if task is None or task.done():
            self._probes[name] = asyncio.get_running_loop().create_task(
                self._probe_until_closed(name), name=f"imagegate-probe-{name}"
            )

    async def _probe_until_closed(self, name: str) -> None:
        """Probe an open provider in the background, testing what failed, until it answers."""
        breaker = self.breakers[name]
        provider = self.providers[name]
        while breaker.state == "open":
            await self._sleep(max(0.0, breaker.opened_until - time.monotonic()))
            kind = breaker.probe_kind
            breaker.last_probe_at = datetime.now(UTC)
            breaker.last_probe_kind = kind
            try:
                await run_probe(provider, kind, self._probe_deadline(name, kind))
            except ImagegateError as exc:  # a provider error, or a missing extra
                breaker.probe_failed(exc)
            else:
                if breaker.probe_passed(kind):
                    self._breaker_changed(name)

    def _probe_deadline(self, name: str, kind: str) -> Deadline:
        """A metadata or handshake probe gets PROBE_DEADLINE_S. A generation probe gets the
        provider's own budget, and, once any shape has history, that shape's hang limit: the
        cheapest image should come no later than the slowest learned one."""
        if kind != "generation":
            return Deadline(PROBE_DEADLINE_S)
        provider = self.providers[name]
        limits = [
            limit
            for _, memory in self.latency.shapes(name)
            if (limit := hang_limit(self.settings, memory, _first_byte_budget(provider)))
        ]
        hang = max(limits, key=lambda limit: limit.limit_s) if limits else None
        budget = provider.config.timeout_s or self.settings.deadline_s
        return Deadline(budget, AttemptControl(hang=hang))

    # -- what the router knows -----------------------------------------------------------

    def learned(self, name: str) -> list[dict[str, object]]:
        """Each remembered shape of ``name``: quantiles and the effective timeouts (JSON)."""
        provider = self.providers[name]
        configured = _first_byte_budget(provider)
        rows: list[dict[str, object]] = []
        for shape, memory in self.latency.shapes(name):
            total = memory.total.quantiles()
            first = memory.first_byte.quantiles()
            hedge = None if provider.paid else hedge_after(self.settings, memory)
            hang = hang_limit(self.settings, memory, configured)
            rows.append(
                {
                    "shape": shape.label,
                    "total": total.to_json() if total else None,
                    "first_byte": first.to_json() if first else None,
                    "hedge_after_s": round(hedge.after_s, 3) if hedge else None,
                    "first_byte_timeout_s": round(hang.limit_s, 3) if hang else configured,
                    "first_byte_timeout_learned": hang is not None,
                    "why": "; ".join(
                        part
                        for part in (
                            f"hedged after {hedge.why}" if hedge else "",
                            f"hang limit {hang.why}" if hang else "",
                        )
                        if part
                    )
                    or None,
                }
            )
        return rows

    def learned_hang_limits(self, name: str) -> list[tuple[Shape, HangLimit]]:
        """The shapes of ``name`` whose learned first-byte limit is below the configured one."""
        configured = _first_byte_budget(self.providers[name])
        out = []
        for shape, memory in self.latency.shapes(name):
            limit = hang_limit(self.settings, memory, configured)
            if limit is not None:
                out.append((shape, limit))
        return out

    async def aclose(self) -> None:
        """Stop the background probes."""
        for task in self._probes.values():
            task.cancel()
        for task in self._probes.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._probes.clear()


def configured_timeouts(cfg: ProviderConfig) -> dict[str, float | None]:
    """The stage budgets a provider's config sets, in seconds (None: not set or not remote)."""
    keys = ("connect_timeout_s", "tls_timeout_s", "first_byte_timeout_s", "read_timeout_s")
    out: dict[str, float | None] = {
        key.removesuffix("_timeout_s") + "_s": getattr(cfg, key, None) for key in keys
    }
    out["attempt_s"] = cfg.timeout_s
    return out


def _first_byte_budget(provider: Provider) -> float | None:
    """The configured first-byte budget of a remote provider (None for a local one)."""
    value = getattr(provider.config, "first_byte_timeout_s", None)
    return float(value) if value is not None else None


def _attempt_record(outcome: Outcome, kind: AttemptOutcome) -> Attempt:
    """The attempt record of one outcome, with a note on a learned limit that ended it."""
    note = outcome.note
    hang = outcome.control.hang
    if outcome.error is not None and outcome.control.hung and hang is not None:
        learned = f"learned first-byte limit {hang.limit_s:.1f} s ({hang.why})"
        note = f"{note}; {learned}" if note else learned
    return Attempt(
        provider=outcome.name,
        outcome=kind,
        error=_attempt_error(outcome.error) if outcome.error is not None else None,
        elapsed_s=outcome.elapsed_s,
        note=note,
        usage=outcome.control.usage,
    )


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
    attributes = {"imagegate.provider": provider.name, "imagegate.provider.type": provider.type}
    with tracing.span(f"attempt {provider.name}", attributes=attributes) as span:
        outcome = "error"
        try:
            try:
                async with asyncio.timeout(attempt.remaining()), slot:
                    images = await provider.generate(request, attempt, progress)
            except TimeoutError:
                raise Timeout(
                    f"no answer within the attempt's {time.monotonic() - started:.1f} s "
                    f"budget; raise providers.{provider.name}.timeout_s or "
                    "gateway.deadline_s if it needs longer",
                    provider=provider.name,
                    stage="total",
                    elapsed_s=time.monotonic() - started,
                ) from None
            outcome = "ok"
            return images
        except asyncio.CancelledError:  # a hedge that lost, or the job was cancelled
            outcome = "cancelled"
            raise
        except ProviderError as exc:
            tracing.provider_failed(span, exc)
            raise
        except ImagegateError:  # raised on purpose (a missing extra): it stands as it is
            raise
        except Exception as exc:  # a bug in the provider: a 502 naming the stage, not a 500
            error = _unexpected(provider.name, exc, attempt, time.monotonic() - started)
            tracing.provider_failed(span, error)
            raise error from exc
        finally:
            control = attempt.control
            stages = control.stages if control is not None else {}
            tracing.set_attributes(
                span,
                {
                    "imagegate.outcome": outcome,
                    "imagegate.elapsed_s": round(time.monotonic() - started, 6),
                    **{f"imagegate.{stage}_s": seconds for stage, seconds in stages.items()},
                },
            )


def _unexpected(name: str, exc: Exception, attempt: Deadline, elapsed_s: float) -> ProtocolError:
    """A provider that raised something other than a ProviderError: a ProtocolError naming
    the stage it failed in: ``read`` once the upstream answered (the answer could not be
    handled; it may have been billed), else ``runtime``."""
    stages = attempt.control.stages if attempt.control is not None else {}
    stage: Stage = "read" if "first_byte" in stages else "runtime"
    log.error("provider %s failed unexpectedly in stage %s: %s", name, stage, type(exc).__name__)
    return ProtocolError(
        f"failed unexpectedly in stage {stage}: {type(exc).__name__}: {exc}",
        provider=name,
        stage=stage,
        elapsed_s=elapsed_s,
        fix="this is a bug in the provider; the server log names it",
    )


def _since(started: float) -> float:
    return round(time.monotonic() - started, 4)


def _attempt_error(exc: ProviderError) -> AttemptError:
    return AttemptError(type=type(exc).__name__, stage=exc.stage, message=exc.message, fix=exc.fix)


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
