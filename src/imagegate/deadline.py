"""A point in monotonic time by which something must be done: a request's, a job's, a stage's."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar

from imagegate.errors import Timeout
from imagegate.hedging import AttemptControl

__all__ = ["Deadline", "finish_early", "finishing_early", "running_job"]


class _Finish:
    """A job's finish-early request, and whether a provider that honours it took it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.claimed = False


_FINISH: ContextVar[_Finish | None] = ContextVar("imagegate_finish", default=None)
_RUNNING: dict[str, _Finish] = {}


@contextlib.contextmanager
def running_job(job_id: str | None) -> Iterator[None]:
    """While the block runs, :func:`finish_early` of ``job_id`` reaches the code inside it
    (tasks and threads it starts included: they copy the context)."""
    if job_id is None:
        yield
        return
    finish = _Finish()
    _RUNNING[job_id] = finish
    token = _FINISH.set(finish)
    try:
        yield
    finally:
        _FINISH.reset(token)
        if _RUNNING.get(job_id) is finish:
            del _RUNNING[job_id]


def finish_early(job_id: str) -> bool:
    """Ask the job running in this process to stop sampling and return what it has made so
    far (A1111's interrupt). False when it does not run here, or its provider cannot return
    a partial result (then cancel it instead)."""
    finish = _RUNNING.get(job_id)
    if finish is None or not finish.claimed:
        return False
    finish.event.set()
    return True


def finishing_early() -> threading.Event | None:
    """The current job's finish-early event (set once asked), taken by a provider that can
    return a partial image (taking it tells :func:`finish_early` so); None outside a job."""
    finish = _FINISH.get()
    if finish is None:
        return None
    finish.claimed = True
    return finish.event


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
