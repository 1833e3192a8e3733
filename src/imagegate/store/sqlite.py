"""SQLite specifics of the Store: where the database lives, how each connection is set up, and
how the store notices that its file was deleted or replaced."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import URL, make_url

__all__ = [
    "DB_FILENAME",
    "SQLITE_BUSY_TIMEOUT_MS",
    "default_url",
    "file_identity",
    "process_alive",
    "sqlite_file",
    "sqlite_pragmas",
]

DB_FILENAME = "imagegate.db"
SQLITE_BUSY_TIMEOUT_MS = 5000


def default_url(data_dir: Path) -> str:
    """The SQLite database in the data dir."""
    url = URL.create("sqlite+aiosqlite", database=str(data_dir / DB_FILENAME))
    return url.render_as_string(hide_password=False)


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives the process being killed (kill -9) without an fsync per
    # commit, which would cost milliseconds on every job; only a power loss can drop the last
    # commits before a checkpoint.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, or None (another database, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def file_identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of ``path``, or None when it is gone."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
