"""Hedging: racing two providers without sending twice, and when to start the second one.

Connect hedging. When a provider's connect and TLS handshake lag (``hedge_connect_after_s``),
the router starts the next provider on the route as well. Each attempt gets its own
``SendGate``, handed to it explicitly inside its ``AttemptControl`` (the attempt's deadline
carries it to the transport); the transport calls ``ready()`` once its connection is up, just
before the first byte of a request goes out, and waits there until the router grants it. The
router grants the first to arrive and cancels the other, so no request body is ever sent twice:
this is safe even for paid providers. The gate also tracks the stage the attempt is in, so the
loser of a race can be reported as "stalled in tls".

Request hedging. When an unpaid provider's answer lags past ``hedge_after_s`` or, by default,
past its learned p95 for the request's shape (never below ``hedge_min_s``, never without
``learn_min_samples`` successes), the next unpaid provider gets the request too and the first
good answer wins. A half-open breaker's trial request is hedged the same way to the next
provider, paid or not, so that no caller waits a whole budget on a provider being tested.

Hang detection. Once a provider has history for a shape, a first byte that takes longer than
``hang_p99_multiple`` times its p99 (never less than ``hang_min_s``, never more than the
configured first-byte budget) is a hang: the transport ends the attempt with a Timeout at stage
``first_byte`` that names the expected and the waited time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from imagegate.errors import ProviderError, Timeout

if TYPE_CHECKING:
    from imagegate.config import GatewaySettings
    from imagegate.latency import ShapeLatency
    from imagegate.request import GeneratedImage

HandshakeStage = Literal["dns", "connect", "tls"]


class SendGate:
    """Holds an attempt at the moment its connection is ready, until the router lets it send."""

    def __init__(self, *, granted: bool = False) -> None:
        self.connected = asyncio.Event()
        self.granted = asyncio.Event()
        if granted:
            self.grant()
        self.stage: HandshakeStage = "connect"

    def grant(self) -> None:
        """Let the attempt send (now, or as soon as it connects)."""
        self.granted.set()

    async def ready(self) -> None:
        """Called by the transport when connected: report it, then wait for the grant."""
        self.connected.set()
        await self.granted.wait()


@dataclass(frozen=True)
class Learned:
    """A wait the router chose, and why (shown in the attempts)."""

    after_s: float
    why: str
    from_history: bool = False
    """Learned from the provider's p95: losing such a race is expected now and then."""


@dataclass(frozen=True)
class HangLimit:
    """A first-byte limit learned from history, tighter than the configured one."""

    limit_s: float
    expected_s: float
    """The p99 the limit was derived from."""
    why: str


@dataclass
class AttemptControl:
    """What the router hands one attempt, explicitly, on the attempt's ``Deadline``.

    The transport reads it from the deadline it is given: it waits at ``gate`` before sending
    (None: send at once), ends a first byte that takes longer than ``hang`` (None: only the
    configured budget applies), and reports the longest first-byte wait of the attempt in
    ``first_byte_s`` so the router can learn from it. A request a provider sends on a fresh
    ``Deadline`` (a background cancel, a cleanup) carries none of this.
    """

    gate: SendGate | None = None
    hang: HangLimit | None = None
    first_byte_s: float | None = None
    hung: bool = False
    """Set by the transport when ``hang`` ended the attempt."""
    usage: dict[str, int] | None = None
    """What the upstream said the attempt used, set by a provider whose API reports it (the
    token counts of OpenAI's ``usage`` object); recorded on the attempt."""
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds each stage of the attempt's last request took (``dns``, ``connect``, ``tls``,
    ``first_byte``, ``read``; the one it failed in up to the failure), set by the transport;
    put on the attempt's trace span."""

    def saw_first_byte(self, seconds: float) -> None:
        self.first_byte_s = max(self.first_byte_s or 0.0, seconds)


def hedge_after(
    settings: GatewaySettings, latency: ShapeLatency | None, *, trial: bool = False
) -> Learned | None:
    """When to start the next provider beside this one; None: not at all.

    ``hedge_after_s`` (> 0) wins; else the learned p95 for the shape, floored at
    ``hedge_min_s``, once ``learn_min_samples`` successes exist. A half-open ``trial`` without
    history is hedged after ``half_open_hedge_s``.
    """
    if settings.hedge_after_s > 0:
        return Learned(
            settings.hedge_after_s, f"gateway.hedge_after_s = {settings.hedge_after_s:g}"
        )
    quantiles = latency.total.quantiles() if latency is not None else None
    if settings.hedge_learned and quantiles and quantiles.samples >= settings.learn_min_samples:
        after = max(settings.hedge_min_s, quantiles.p95)
        floor = " (the hedge_min_s floor)" if after > quantiles.p95 else ""
        why = f"p95 of {quantiles.samples} successes: {quantiles.p95:.2f} s{floor}"
        return Learned(after, why, from_history=True)
    if trial:
        return Learned(
            settings.half_open_hedge_s,
            f"half-open trial without history: half_open_hedge_s = {settings.half_open_hedge_s:g}",
        )
    return None


def hang_limit(
    settings: GatewaySettings, latency: ShapeLatency | None, configured_s: float | None
) -> HangLimit | None:
    """The learned first-byte limit for a shape, when history exists and it beats the config."""
    if settings.hang_p99_multiple <= 0 or latency is None:
        return None
    quantiles = latency.first_byte.quantiles()
    if quantiles is None or quantiles.samples < settings.learn_min_samples:
        return None
    limit = max(settings.hang_min_s, settings.hang_p99_multiple * quantiles.p99)
    if configured_s is not None and limit >= configured_s:
        return None  # the configured budget is the cap
    why = (
        f"{settings.hang_p99_multiple:g}x the first-byte p99 of {quantiles.p99:.2f} s over "
        f"{quantiles.samples} successes"
    )
    return HangLimit(limit, quantiles.p99, why)


# --------------------------------------------------------------------------- races


@dataclass
class Outcome:
    """How one provider's attempt ended: images, an error, or cancelled by a race."""

    name: str
    started: float
    control: AttemptControl = field(default_factory=AttemptControl)
    images: list[GeneratedImage] = field(default_factory=list)
    error: ProviderError | None = None
    cancelled: bool = False
    elapsed_s: float = 0.0
    note: str | None = None
    slow_is_expected: bool = False
    """Lost a race hedged at its own p95: it counts as slow, but does not open the breaker."""


@dataclass
class Contender:
    """One provider's attempt running as a task, with its control (send gate, hang limit)."""

    name: str
    control: AttemptControl
    task: asyncio.Task[list[GeneratedImage]]
    started: float
    note: str | None = None
    slow_is_expected: bool = False

    @property
    def gate(self) -> SendGate:
        assert self.control.gate is not None
        return self.control.gate

    def _outcome(self, **kw: Any) -> Outcome:
        return Outcome(
            self.name,
            self.started,
            self.control,
            note=self.note,
            slow_is_expected=self.slow_is_expected,
            **kw,
        )

    async def outcome(self) -> Outcome:
        """Wait for the attempt; its images or its error."""
        try:
            images = await self.task
        except ProviderError as exc:
            exc.provider = exc.provider or self.name
            if exc.elapsed_s is None:
                exc.elapsed_s = since(self.started)
            return self._outcome(error=exc, elapsed_s=since(self.started))
        return self._outcome(images=images, elapsed_s=since(self.started))

    async def drop(self) -> None:
        """Cancel the attempt and wait until it has let go of its connection."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ProviderError):
            await self.task

    async def lost_handshake(self, winner: str) -> Outcome:
        """Drop a contender whose handshake lost the race, reported as a timeout of its stage."""
        stage = self.gate.stage
        await self.drop()
        waited = since(self.started)
        error = Timeout(
            f"the {stage} stage had not finished after {waited:.1f} s while {winner} connected, "
            f"so the request went to {winner}; run `imagegate doctor {self.name}` to see why",
            provider=self.name,
            stage=stage,
            elapsed_s=waited,
        )
        return self._outcome(error=error, elapsed_s=waited)

    async def lost_answer(self, winner: str) -> Outcome:
        """Drop a contender whose answer lost a request-hedging race."""
        await self.drop()
        waited = since(self.started)
        slow = Timeout(
            f"no answer after {waited:.1f} s while {winner} answered, so its request was "
            f"cancelled; run `imagegate doctor {self.name}`",
            provider=self.name,
            stage="first_byte",
            elapsed_s=waited,
        )
        return self._outcome(error=slow, cancelled=True, elapsed_s=waited)


def since(started: float) -> float:
    return round(time.monotonic() - started, 4)


async def first_of(waits: list[Awaitable[Any]], within_s: float) -> None:
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


async def handshake_race(
    first: Contender, second: Contender
) -> tuple[list[Outcome], Contender | None]:
    """The first contender to connect wins; the other is dropped before it sends anything.

    A contender whose attempt fails before connecting (refused, bad certificate) is reported
    and the other one wins when it connects.
    """
    outcomes: list[Outcome] = []
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
            await first_of([*waits, *(c.task for c in pending)], within_s=3600)
    return outcomes, None


async def answer_race(first: Contender, second: Contender) -> list[Outcome]:
    """Both have the request; the first good answer wins and the other is cancelled."""
    outcomes: list[Outcome] = []
    pending = {first.task: first, second.task: second}
    while pending:
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            outcome = await pending.pop(task).outcome()
            if outcome.error is None:
                for other in pending.values():
                    outcomes.append(await other.lost_answer(outcome.name))
                return [*outcomes, outcome]
            outcomes.append(outcome)
    return outcomes
