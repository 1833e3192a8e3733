"""What the store hands out: frozen copies of rows, detached from any database session."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from imagegate.request import ImageResult


class ImageRecord(BaseModel):
    """One stored image; ``path`` is relative to the data dir (``Store.image_path`` resolves)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    job_id: str
    sha256: str
    path: str
    width: int
    height: int
    seed: int
    provider: str
    model: str
    prompt: str
    created_at: datetime


class DeliveryRecord(BaseModel):
    """A job's webhook delivery: its status and every attempt made so far."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    status: str
    """``pending``, ``delivered`` or ``failed`` (given up)."""
    attempts: list[dict[str, Any]]
    """Each attempt: ``at``, ``status`` (the HTTP status, or None), ``error``, ``elapsed_s``."""
    created_at: datetime
    next_at: datetime
    delivered_at: datetime | None


class JobRecord(BaseModel):
    """One job as stored, with its images in the order they were made."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    status: str
    request: dict[str, Any]
    route: list[str]
    provider: str | None
    model: str | None
    seed: int | None
    progress: float
    step: int | None
    steps: int | None
    attempts: list[dict[str, Any]]
    error: dict[str, Any] | None
    cost: float
    priority: int
    queue: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_s: float | None
    source: str
    retries: int
    owner: str | None = None
    webhook: dict[str, Any] | None = None
    """Where the job's end is posted (``url``, and ``base`` for its image URLs)."""
    traceparent: str | None = None
    images: list[ImageRecord] = []
    delivery: DeliveryRecord | None = None
    """The webhook delivery, once the job has ended with a webhook."""


class EventRecord(BaseModel):
    """One job event; ``id`` increases, so a subscriber resumes after the last one it saw."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int
    job_id: str
    kind: str
    data: dict[str, Any]
    created_at: datetime


def succeeded_event_data(result: ImageResult) -> dict[str, Any]:
    """The ``succeeded`` event of a job: the provider, the stored image ids, attempts made."""
    return {
        "provider": result.provider,
        "images": [image.id for image in result.images],
        "attempts": len(result.attempts),
    }


def ended_event_data(error: BaseException | None, attempts: int) -> dict[str, Any]:
    """The ``failed`` or ``cancelled`` event of a job: the error's type and message."""
    message = getattr(error, "message", None)
    return {
        "error": {
            "type": type(error).__name__ if error is not None else "Unknown",
            "message": message if isinstance(message, str) else str(error or ""),
        },
        "attempts": attempts,
    }
