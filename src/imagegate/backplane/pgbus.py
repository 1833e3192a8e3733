"""The PostgreSQL backplane's fan-out: job events and breaker state, woken by LISTEN/NOTIFY.

Events are rows in ``job_events`` (a trigger NOTIFYs ``imagegate_events`` with the job id on
each insert); breakers are rows in ``breakers`` (each save NOTIFYs ``imagegate_breakers`` with
the snapshot). One LISTEN connection per process (``PostgresBackplane._listen``) calls
:meth:`PostgresEventBus.wake` and :meth:`PostgresBreakerStore.notified`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, text

from imagegate.backplane.base import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    BreakerSnapshot,
    BreakerStore,
    EventBus,
)
from imagegate.store import Store
from imagegate.store.models import Job
from imagegate.store.records import EventRecord

__all__ = ["BREAKERS_CHANNEL", "EVENTS_CHANNEL", "PostgresBreakerStore", "PostgresEventBus"]

EVENTS_CHANNEL = "imagegate_events"
BREAKERS_CHANNEL = "imagegate_breakers"
POLL_S = 5.0  # a waiter re-reads at least this often, should a NOTIFY be lost


class PostgresEventBus(EventBus):
    """Events in ``job_events``; a LISTEN connection wakes this process's subscribers."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._wakers: dict[str, set[asyncio.Event]] = {}

    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> EventRecord:
        return await self._store.add_event(job_id, kind, data)  # the trigger NOTIFYs

    @contextlib.contextmanager
    def _waker(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event that :meth:`wake` sets for ``job_id`` while the block runs."""
        waker = asyncio.Event()
        self._wakers.setdefault(job_id, set()).add(waker)
        try:
            yield waker
        finally:
            wakers = self._wakers.get(job_id)
            if wakers is not None:
                wakers.discard(waker)
                if not wakers:
                    del self._wakers[job_id]

    def wake(self, job_id: str) -> None:
        for waker in self._wakers.get(job_id, ()):
            waker.set()

    async def until_ended(self, job_id: str) -> None:
        """Return once the job's row is in a terminal status (one read per NOTIFY)."""
        with self._waker(job_id) as waker:
            while True:
                waker.clear()
                async with self._store.engine.connect() as conn:
                    status = await conn.scalar(select(Job.status).where(Job.id == job_id))
                if status is None or status in TERMINAL_STATUSES:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await waker.wait()

    async def subscribe(self, job_id: str, after_id: int = 0) -> AsyncIterator[EventRecord]:
        last = after_id
        idle = 0
        with self._waker(job_id) as waker:
            while True:
                waker.clear()
                events = await self._store.events_after(job_id, last)
                for event in events:
                    last = event.id
                    yield event
                    if event.kind in TERMINAL_EVENTS:
                        return
                if not events:
                    job = await self._store.get_job(job_id)
                    if job is None or job.status in TERMINAL_STATUSES:
                        idle += 1
                        if idle > 1:  # finished, and no terminal event came in one poll
                            return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await waker.wait()


class PostgresBreakerStore(BreakerStore):
    """One ``breakers`` row per provider, upserted atomically; NOTIFY tells every process."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.on_change: Callable[[BreakerSnapshot], None] | None = None

    async def load(self) -> dict[str, BreakerSnapshot]:
        async with self._store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT provider, state, opened_until, failures FROM breakers")
                )
            ).all()
        return {
            str(p): BreakerSnapshot(str(p), "open" if s == "open" else "closed", u, int(f))
            for p, s, u, f in rows
        }

    async def save(self, snapshot: BreakerSnapshot) -> None:
        payload = json.dumps(
            {
                "provider": snapshot.provider,
                "state": snapshot.state,
                "opened_until": snapshot.opened_until.isoformat()
                if snapshot.opened_until
                else None,
                "failures": snapshot.failures,
                "last_error": snapshot.last_error,
            }
        )
        async with self._store.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO breakers (provider, state, opened_until, failures, updated_at) "
                    "VALUES (:p, :s, :u, :f, now()) ON CONFLICT (provider) DO UPDATE SET "
                    "state = EXCLUDED.state, opened_until = EXCLUDED.opened_until, "
                    "failures = EXCLUDED.failures, updated_at = EXCLUDED.updated_at"
                ),
                {
                    "p": snapshot.provider,
                    "s": snapshot.state,
                    "u": snapshot.opened_until,
                    "f": snapshot.failures,
                },
            )
            await conn.execute(
                text("SELECT pg_notify(:c, :m)"), {"c": BREAKERS_CHANNEL, "m": payload}
            )

    def watch(self, callback: Callable[[BreakerSnapshot], None]) -> None:
        self.on_change = callback

    def notified(self, payload: str) -> None:
        if self.on_change is None:
            return
        data = json.loads(payload)
        until = data.get("opened_until")
        self.on_change(
            BreakerSnapshot(
                data["provider"],
                "open" if data["state"] == "open" else "closed",
                datetime.fromisoformat(until) if until else None,
                int(data.get("failures", 0)),
                data.get("last_error"),
            )
        )
