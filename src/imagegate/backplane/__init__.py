"""The Backplane: job queue, job store, event bus and breaker store behind one interface.

``LocalBackplane`` (SQLite, asyncio workers, in-process fan-out) is the default; a distributed
adapter implements the same four pieces. Nothing here is imported by ``import imagegate``.
"""

from imagegate.backplane.base import (
    Backplane,
    BreakerSnapshot,
    BreakerStore,
    EventBus,
    Interrupted,
    JobContext,
    JobHandler,
    JobOutcome,
    JobQueue,
    JobRecorder,
    JobStore,
    QueueFull,
    Submitted,
)
from imagegate.backplane.local import LocalBackplane

__all__ = [
    "Backplane",
    "BreakerSnapshot",
    "BreakerStore",
    "EventBus",
    "Interrupted",
    "JobContext",
    "JobHandler",
    "JobOutcome",
    "JobQueue",
    "JobRecorder",
    "JobStore",
    "LocalBackplane",
    "QueueFull",
    "Submitted",
]
