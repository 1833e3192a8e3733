"""The record of one try on one provider, whatever its outcome; carried by results and errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["Attempt", "AttemptError", "Outcome"]

Outcome = Literal["ok", "error", "skipped", "cancelled"]


class AttemptError(BaseModel):
    """Why one attempt failed."""

    type: str
    stage: str | None = None
    message: str
    fix: str | None = None
    """What to do about it; the message ends with it too."""


class Attempt(BaseModel):
    """One try on one provider, whatever its outcome."""

    provider: str
    outcome: Outcome
    error: AttemptError | None = None
    elapsed_s: float
    note: str | None = Field(default=None, exclude_if=lambda note: note is None)
    """Why the router did something unusual with this attempt: a hedge, a learned limit;
    left out of the JSON when there is nothing to say."""
    usage: dict[str, int] | None = Field(default=None, exclude_if=lambda usage: usage is None)
    """What the upstream reported the attempt used (OpenAI's ``usage`` token counts), when it
    reports it; left out of the JSON otherwise."""
