"""A point in monotonic time by which something must be done: a request's, a job's, a stage's."""

from __future__ import annotations

import time

from imagegate.errors import Timeout
from imagegate.hedging import AttemptControl

__all__ = ["Deadline"]


class Deadline:
    """A point in monotonic time by which something must be done.

    The router's attempts also carry their ``AttemptControl`` here (the send gate of a
    handshake race, a learned first-byte limit): the transport reads it from the deadline it
    is given, and ``within`` hands it on. A fresh ``Deadline`` carries none.
    """

    def __init__(self, seconds: float, control: AttemptControl | None = None) -> None:
        self.at = time.monotonic() + seconds
        self.control = control

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def within(self, seconds: float | None) -> Deadline:
        """A deadline no later than this one and at most ``seconds`` from now."""
        child = Deadline(0, self.control)
        child.at = self.at if seconds is None else min(self.at, time.monotonic() + seconds)
        return child

    def check(self, provider: str | None = None, started: float | None = None) -> None:
        """Raise Timeout(total) when the deadline has passed."""
        if self.expired:
            elapsed = time.monotonic() - started if started is not None else None
            raise Timeout(
                "the request deadline passed; raise gateway.deadline_s or the provider's timeout_s",
                provider=provider,
                stage="total",
                elapsed_s=elapsed,
            )
