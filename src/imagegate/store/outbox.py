"""The webhook outbox: which job ends are still to be posted, and how each attempt went.

A row is written in the transaction that ends a job with a webhook (``Store.end``),
so no end is lost between the job's row and its event. Any process
with the store may send it: one first ``claim``s it (a lease until ``locked_until``), so two
processes rarely post the same end; a process killed mid-send leaves the lease to run out and
another sends it again (at least once, never lost).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update

from imagegate.store.db import Store
from imagegate.store.models import WebhookOutbox

__all__ = ["claim", "due", "record_attempt", "release"]


async def due(store: Store, now: datetime, limit: int = 32) -> list[str]:
    """The job ids whose end is pending and due by ``now`` and not held by a sender."""
    query = (
        select(WebhookOutbox.job_id)
        .where(
            WebhookOutbox.status == "pending",
            WebhookOutbox.next_at <= now,
            or_(WebhookOutbox.locked_until.is_(None), WebhookOutbox.locked_until < now),
        )
        .order_by(WebhookOutbox.next_at)
        .limit(limit)
    )
    async with store.engine.connect() as conn:
        return [str(job_id) for job_id in (await conn.scalars(query)).all()]


async def claim(store: Store, job_id: str, now: datetime, until: datetime) -> bool:
    """Hold the job's pending end until ``until``; False when another sender holds it."""
    query = (
        update(WebhookOutbox)
        .where(
            WebhookOutbox.job_id == job_id,
            WebhookOutbox.status == "pending",
            or_(WebhookOutbox.locked_until.is_(None), WebhookOutbox.locked_until < now),
        )
        .values(locked_until=until)
    )
    async with store.engine.begin() as conn:
        return (await conn.execute(query)).rowcount == 1


async def release(store: Store, job_id: str) -> None:
    """Give up the hold on a pending end without an attempt (a sender stopping)."""
    query = (
        update(WebhookOutbox)
        .where(WebhookOutbox.job_id == job_id, WebhookOutbox.status == "pending")
        .values(locked_until=None)
    )
    async with store.engine.begin() as conn:
        await conn.execute(query)


async def record_attempt(
    store: Store,
    job_id: str,
    attempt: Mapping[str, Any],
    *,
    status: str,
    next_at: datetime | None = None,
    delivered_at: datetime | None = None,
) -> None:
    """Append one attempt and set the delivery's ``status`` (``pending`` again at
    ``next_at``, ``delivered``, or ``failed``); the lease is released."""
    async with store.engine.begin() as conn:
        row = (
            await conn.execute(
                select(WebhookOutbox.attempts, WebhookOutbox.next_at).where(
                    WebhookOutbox.job_id == job_id
                )
            )
        ).first()
        if row is None:  # the job was deleted meanwhile (retention)
            return
        values: dict[str, Any] = {
            "attempts": [*row[0], dict(attempt)],
            "status": status,
            "locked_until": None,
            "delivered_at": delivered_at,
        }
        if next_at is not None:
            values["next_at"] = next_at
        await conn.execute(
            update(WebhookOutbox).where(WebhookOutbox.job_id == job_id).values(**values)
        )
