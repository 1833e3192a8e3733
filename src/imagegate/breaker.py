"""The circuit breaker of one provider, and the probe that tests what failed.

A breaker opens on a failure that costs every caller (unreachable, a timeout, a 429, a refused
key) or on repeated failures, and only a background probe closes it, never a user request. The
probe repeats what failed at the cheapest cost that proves recovery:

- ``handshake``: the failure was in ``dns``, ``connect`` or ``tls``. The provider's
  ``probe_handshake`` (by default its metadata check, whose request opens a fresh connection)
  proves the path is back.
- ``generation``: an *unpaid* provider failed after the request went out (``first_byte``,
  ``read``, ``total``, a 5xx, a malformed answer). A metadata endpoint may answer while the
  image endpoint hangs, so the provider's ``probe_generation`` makes one real image of the
  cheapest shape (``probe_request``: smallest size, one step).
- ``metadata``: anything else (a refused key, a 429, a sleeping Space), and every failure of
  a *paid* provider, whose probes must not cost money. For a paid provider that failed after
  sending, a metadata answer does not prove the image endpoint is back: the breaker goes
  *half-open* and lets one user request through as a trial, which the router hedges to the next
  provider so that its caller never waits the whole budget. The trial's success closes the
  breaker; its failure opens it again.

Each reopening without a close in between doubles the time until the next probe, from
``breaker_open_s`` up to ``breaker_max_open_s``; a provider's Retry-After is honoured.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from imagegate.deadline import Deadline
from imagegate.errors import (
    AuthError,
    ConnectError,
    ContentFiltered,
    ImagegateError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Timeout,
    Unavailable,
    UpstreamError,
)

if TYPE_CHECKING:
    from imagegate.providers.base import Provider

BreakerState = Literal["closed", "open", "half_open"]
ProbeKind = Literal["handshake", "generation", "metadata"]

_HANDSHAKE_STAGES = (None, "dns", "connect", "tls")


def probe_kind(error: ProviderError, *, paid: bool) -> ProbeKind:
    """What the probe must repeat to prove that ``error`` is healed."""
    if isinstance(error, ConnectError | Timeout) and error.stage in _HANDSHAKE_STAGES:
        return "handshake"
    if _failed_after_sending(error):
        return "metadata" if paid else "generation"
    return "metadata"


def _failed_after_sending(error: ProviderError) -> bool:
    """A failure of the generation itself, which a metadata answer does not rule out."""
    if isinstance(error, UpstreamError | ProtocolError):
        return True
    return isinstance(error, Timeout | ConnectError) and error.stage not in _HANDSHAKE_STAGES


def opens_at_once(error: ProviderError) -> bool:
    """Failures that open the breaker at once: the provider cannot serve anyone right now.

    A timeout is one of them whatever its stage: it costs the caller a whole budget, so the
    next request must not pay it again. The probe puts a provider that was only slow back
    on the route as soon as it answers.
    """
    return isinstance(
        error, Timeout | ConnectError | Unavailable | RateLimited | AuthError | QuotaExceeded
    )


def counts_against_provider(error: ProviderError) -> bool:
    """A caller's bad request or a content filter says nothing about the provider's health."""
    return not isinstance(error, InvalidRequest | ContentFiltered)


@dataclass
class Breaker:
    """The circuit breaker of one provider; only the background probe (or a trial) closes it."""

    paid: bool = False
    open_s: float = 2.0
    max_open_s: float = 60.0
    consecutive_limit: int = 3
    window: int = 20
    rate_limit: float = 0.5
    state: BreakerState = "closed"
    opened_until: float = 0.0
    reopen_count: int = 0
    consecutive: int = 0
    probe_kind: ProbeKind = "metadata"
    """What the next probe tests, from the failure that opened the breaker."""
    needs_trial: bool = False
    """A paid provider failed after sending: a metadata probe only makes it half-open."""
    trial_running: bool = False
    last_error: str | None = None
    last_probe_at: datetime | None = None
    last_probe_ok: bool | None = None
    last_probe_kind: ProbeKind | None = None
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def is_open(self) -> bool:
        """Not closed: open, or half-open waiting for (or running) its trial."""
        return self.state != "closed"

    @property
    def shared_state(self) -> Literal["closed", "open"]:
        """The state other replicas see: a half-open breaker is open to them."""
        return "closed" if self.state == "closed" else "open"

    def record_success(self) -> bool:
        """Count a success; True when it was a half-open trial, which closes the breaker."""
        self.consecutive = 0
        self.outcomes.append(True)
        if self.trial_running:
            self.close()
            return True
        return False

    def record_failure(self, error: ProviderError, *, lost_race: bool = False) -> bool:
        """Count a failure; True when this failure opened the breaker.

        ``lost_race``: the attempt was cancelled because a hedge started at its learned p95
        answered first, which is expected about once in twenty requests. It counts toward the
        consecutive and rate limits but does not open the breaker by itself (a race lost at a
        fixed ``hedge_after_s`` does, as a timeout).
        """
        self.consecutive += 1
        self.outcomes.append(False)
        self.last_error = f"{type(error).__name__}: {error.message}"
        failures = self.outcomes.count(False)
        tripped = (
            self.trial_running
            or (opens_at_once(error) and not lost_race)
            or self.consecutive >= self.consecutive_limit
            or (
                len(self.outcomes) >= self.window // 2
                and failures / len(self.outcomes) >= self.rate_limit
            )
        )
        if tripped and self.state != "open":
            self.trial_running = False
            self.probe_kind = probe_kind(error, paid=self.paid)
            self.needs_trial = self.paid and _failed_after_sending(error)
            self.open(error.retry_after)
            return True
        return False

    def open(self, retry_after: float | None = None) -> None:
        """Open until the next probe: ``open_s`` doubled per reopening, at most ``max_open_s``."""
        wait = min(self.max_open_s, self.open_s * 2**self.reopen_count)
        if retry_after is not None:
            wait = max(wait, retry_after)
        self.state = "open"
        self.opened_until = time.monotonic() + wait
        self.reopen_count += 1

    def probe_passed(self, kind: ProbeKind) -> bool:
        """A probe of ``kind`` succeeded: close, or go half-open; True when it closed."""
        self.last_probe_ok = True
        if self.needs_trial and kind == "metadata":
            self.state = "half_open"
            return False
        self.close()
        return True

    def probe_failed(self, error: ImagegateError) -> None:
        self.last_probe_ok = False
        self.last_error = f"{type(error).__name__}: {error.message}"
        self.open(getattr(error, "retry_after", None))

    def start_trial(self) -> bool:
        """Take the half-open breaker's one trial request; False when it is taken."""
        if self.state != "half_open" or self.trial_running:
            return False
        self.trial_running = True
        return True

    def abandon_trial(self) -> None:
        """The trial's caller went away before it ended: the next request is the trial."""
        self.trial_running = False

    def close(self) -> None:
        self.state = "closed"
        self.reopen_count = 0
        self.consecutive = 0
        self.trial_running = False
        self.needs_trial = False
        self.outcomes.clear()


async def run_probe(provider: Provider, kind: ProbeKind, deadline: Deadline) -> str | None:
    """One probe of ``kind``, cut off at ``deadline`` even if the provider ignores it."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline.remaining()):
            if kind == "handshake":
                return await provider.probe_handshake(deadline)
            if kind == "generation":
                return await provider.probe_generation(deadline)
            return await provider.probe(deadline)
    except TimeoutError:
        raise Timeout(
            f"the {kind} probe had no answer within {time.monotonic() - started:.1f} s",
            provider=provider.name,
            stage="total",
            elapsed_s=time.monotonic() - started,
        ) from None
