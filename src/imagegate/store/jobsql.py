"""The job path's writes on SQLite: one plain ``sqlite3`` connection on one thread.

A job's life writes a few rows at a time (the job and its ``queued`` event; the claim and its
``started`` event; the images, the job's end and its terminal event). Through SQLAlchemy's
async engine each of those is a dozen aiosqlite calls, and each call is a hop to aiosqlite's
thread and back. Here each step is one function that runs whole on the writer thread: one
hop, one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), plain SQL.

Values are written exactly as SQLAlchemy writes them for the same columns (JSON text from
``json.dumps``, UTC timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff``), so the ORM reads them back
unchanged. The schema is still the one the migrations own; nothing here creates tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "SQLiteWriter",
    "encode_time",
    "end_job",
    "insert_event",
    "insert_images",
    "insert_job",
    "queue_webhook",
    "transaction",
    "update_job",
]

JOB_COLUMNS = (
    "id", "status", "request", "route", "provider", "model", "seed", "progress", "step",
    "steps", "attempts", "error", "cost", "priority", "queue", "created_at", "started_at",
    "finished_at", "elapsed_s", "source", "retries", "owner", "webhook", "traceparent", "runner",
)  # fmt: skip
IMAGE_COLUMNS = (
    "id", "job_id", "sha256", "path", "width", "height", "seed", "provider", "model", "prompt",
    "created_at",
)  # fmt: skip
_JSON_COLUMNS = frozenset({"request", "route", "attempts", "error", "webhook"})
_NULLABLE_JSON = frozenset({"error", "webhook"})  # JSON(none_as_null=True): None is SQL NULL
_TIME_COLUMNS = frozenset({"created_at", "started_at", "finished_at"})


def _insert(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (ours)


_INSERT_JOB = _insert("jobs", JOB_COLUMNS)
_INSERT_IMAGE = _insert("images", IMAGE_COLUMNS)
_INSERT_EVENT = "INSERT INTO job_events (job_id, kind, data, created_at) VALUES (?, ?, ?, ?)"


def encode_time(value: datetime | None) -> str | None:
    """A timestamp as SQLAlchemy stores it on SQLite: UTC, no offset, microseconds always."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    )


def _encode(column: str, value: Any) -> Any:
    if column in _TIME_COLUMNS:
        return encode_time(value)
    if column in _JSON_COLUMNS:
        return None if value is None and column in _NULLABLE_JSON else json.dumps(value)
    return value


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: the write lock is taken at the start, so it never upgrades."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert_job(conn: sqlite3.Connection, values: Mapping[str, Any]) -> None:
    """Insert one job row; ``values`` has every column of ``jobs``."""
    conn.execute(_INSERT_JOB, [_encode(column, values[column]) for column in JOB_COLUMNS])


def update_job(
    conn: sqlite3.Connection,
    job_id: str,
    values: Mapping[str, Any],
    *,
    status: str | None = None,
) -> int:
    """Set columns of one job (only while it has ``status``, when given); rows changed."""
    sets = ", ".join(f"{column} = ?" for column in values)
    params = [_encode(column, value) for column, value in values.items()]
    sql = f"UPDATE jobs SET {sets} WHERE id = ?"  # noqa: S608 (column names are ours)
    params.append(job_id)
    if status is not None:
        sql += " AND status = ?"
        params.append(status)
    return conn.execute(sql, params).rowcount


def end_job(conn: sqlite3.Connection, job_id: str, values: Mapping[str, Any]) -> bool | None:
    """Set a job's end columns (``values`` has ``finished_at``), and its ``started_at`` to its
    end where it never started, in one statement; whether the job has a webhook (None when
    there is no such job)."""
    sets = ", ".join(f"{column} = ?" for column in values)
    params = [_encode(column, value) for column, value in values.items()]
    params += [encode_time(values["finished_at"]), job_id]
    rows = conn.execute(
        f"UPDATE jobs SET {sets}, started_at = COALESCE(started_at, ?) "  # noqa: S608 (ours)
        "WHERE id = ? RETURNING webhook IS NOT NULL",
        params,
    ).fetchall()
    return bool(rows[0][0]) if rows else None


def add_spend(
    conn: sqlite3.Connection, job_id: str, cost: float, periods: tuple[datetime, datetime]
) -> None:
    """Add a job's cost to its key's ``spent`` when the key counts one of ``periods`` (the
    current day's and month's starts)."""
    conn.execute(
        "UPDATE api_keys SET spent = spent + ? "
        "WHERE name = (SELECT owner FROM jobs WHERE id = ?) AND spent_since IN (?, ?)",
        (cost, job_id, encode_time(periods[0]), encode_time(periods[1])),
    )


def insert_images(conn: sqlite3.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert image rows; each has every column of ``images``."""
    conn.executemany(
        _INSERT_IMAGE, [[_encode(column, row[column]) for column in IMAGE_COLUMNS] for row in rows]
    )


_QUEUE_WEBHOOK = (
    "INSERT INTO webhook_outbox (job_id, status, attempts, created_at, next_at) "
    "SELECT id, 'pending', '[]', ?, ? FROM jobs WHERE id = ? AND webhook IS NOT NULL "
    "ON CONFLICT (job_id) DO NOTHING"
)


def queue_webhook(conn: sqlite3.Connection, job_id: str, now: datetime) -> None:
    """Put the job's end in the webhook outbox, if it has a webhook (in the caller's
    transaction, the one that ends the job)."""
    at = encode_time(now)
    conn.execute(_QUEUE_WEBHOOK, (at, at, job_id))


def insert_event(
    conn: sqlite3.Connection, job_id: str, kind: str, data: Mapping[str, Any], created: datetime
) -> int:
    """Append one event to the job's log; its id."""
    cursor = conn.execute(_INSERT_EVENT, (job_id, kind, json.dumps(data), encode_time(created)))
    return int(cursor.lastrowid or 0)


CHECKPOINT_EVERY = 256
"""Steps run on the event loop between two WAL checkpoints (run on the writer thread)."""


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(error)


class SQLiteWriter:
    """Runs the job path's steps, each one transaction, on one of two ``sqlite3`` connections.

    A step is a plain function of a connection. It first runs right away on the calling (event
    loop) thread, on a connection that never waits for a lock (``busy_timeout=0``) and never
    checkpoints: with WAL and ``synchronous=NORMAL`` a commit is a write to the page cache,
    tens of microseconds, less than the two thread switches a hand-off costs. When another
    connection holds the write lock (a CLI run, a migration), the step runs instead on the
    writer thread's connection, which waits up to the busy timeout there, off the loop. The
    writer thread also checkpoints the WAL every ``CHECKPOINT_EVERY`` steps (the checkpoint's
    fsync stays off the loop).
    """

    def __init__(self, path: Path, *, busy_timeout_ms: int, inline: bool = True) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._use_inline = inline
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._since_checkpoint = 0

    async def open(self) -> None:
        """Start the thread and connect."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="imagegate-sqlite")
        self._conn = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._connect, self._busy_timeout_ms
        )
        if self._use_inline:
            self._inline = self._connect(0)
            self._inline.execute("PRAGMA wal_autocheckpoint=0")

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    async def run(self, step: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``step(connection)`` (see the class doc) and hand back what it returns."""
        executor, conn, inline = self._executor, self._conn, self._inline
        if executor is None or conn is None:
            raise RuntimeError("the store is not open")
        if inline is not None:
            try:
                result = step(inline)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or inline.in_transaction:
                    raise
            else:
                self._since_checkpoint += 1
                if self._since_checkpoint >= CHECKPOINT_EVERY:
                    self._since_checkpoint = 0
                    executor.submit(_checkpoint, conn)
                return result
        return await asyncio.get_running_loop().run_in_executor(executor, step, conn)

    async def close(self) -> None:
        """Close the connections and stop the thread (steps already handed in finish first)."""
        executor, conn, inline = self._executor, self._conn, self._inline
        self._executor = self._conn = self._inline = None
        if inline is not None:
            inline.close()
        if executor is None:
            return
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        except RuntimeError:  # at interpreter exit executors take no new work
            executor.shutdown(wait=True)
            if conn is not None:
                conn.close()  # the connection is not bound to its thread
        executor.shutdown(wait=True)


def _checkpoint(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
