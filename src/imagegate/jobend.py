"""How a job ends, the one way every path ends it: :class:`Succeeded` or :class:`Failed`,
handed to a :class:`JobRecorder`'s ``end`` (``Store.end``, or a backplane's recorder, which
also writes the terminal event), which gives back what it wrote as :class:`Ended`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, overload

from imagegate.request import Attempt, ImageResult

if TYPE_CHECKING:
    from imagegate.store.records import EventRecord

__all__ = ["Ended", "Failed", "JobRecorder", "Succeeded"]


@dataclass(frozen=True)
class Succeeded:
    """A job's end with images: they are stored and the job marked succeeded.

    ``effective`` carries the steps, sampler and guidance the provider really used, for the
    infotext; where it has no value the request's is written, and where neither has one the
    key is left out. ``cost`` is added to the job and to its key's spend.
    """

    result: ImageResult
    cost: float = 0.0
    effective: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Failed:
    """A job's end without images: failed (or cancelled) with the reason: the error's class,
    message, stage and fields, and the attempts made."""

    error: BaseException
    attempts: Sequence[Attempt] = ()
    elapsed_s: float = 0.0
    status: Literal["failed", "cancelled"] = "failed"


R = TypeVar("R", ImageResult, None)


@dataclass(frozen=True)
class Ended(Generic[R]):
    """What ending a job wrote: for a success, the stored result (images with ``id``,
    ``path``, ``sha256`` and ``png``, ``job_id`` set); the terminal event when one was
    written (None when not asked for, or when a shutdown left the job to be requeued)."""

    result: R
    event: EventRecord | None = None


class JobRecorder(Protocol):
    """Where a job's end is recorded: ``Store.end`` and the backplanes' recorders."""

    @overload
    async def end(self, job_id: str, how: Succeeded) -> Ended[ImageResult]: ...

    @overload
    async def end(self, job_id: str, how: Failed) -> Ended[None]: ...

    async def end(
        self, job_id: str, how: Succeeded | Failed
    ) -> Ended[ImageResult] | Ended[None]: ...
