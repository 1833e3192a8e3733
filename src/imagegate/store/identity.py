"""Which database the store opened, so it notices one deleted or replaced under it.

SQLite: the file's (device, inode), checked on every submit (a ``stat``). PostgreSQL: the
database's oid, which a database dropped and created again (or restored under the same name)
does not keep; it is read back at most once a second on submit, and on every readiness check.
Either way, what is written after the swap would be lost, or would land beside a history the
store no longer sees, so new work is refused with a StorageError that says why.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagegate.errors import StorageError
from imagegate.store.sqlite import file_identity

__all__ = ["DatabaseIdentity"]

PG_EVERY_S = 1.0
"""How often a submit reads the PostgreSQL database's oid again, at most."""

_PG_OID = text("SELECT oid FROM pg_database WHERE datname = current_database()")


class DatabaseIdentity:
    """The identity of the database the store opened, and checks against it."""

    def __init__(self) -> None:
        self._file: tuple[Path, tuple[int, int] | None] | None = None
        self._oid: int | None = None
        self._name = ""
        self._checked = 0.0
        self._replaced: StorageError | None = None

    def remember_file(self, path: Path) -> None:
        self._file = (path, file_identity(path))

    async def remember_database(self, conn: AsyncConnection) -> None:
        """Note the PostgreSQL database's oid (on the connection that migrated it)."""
        self._oid = int(await conn.scalar(_PG_OID) or 0)
        self._name = str(await conn.scalar(text("SELECT current_database()")))
        self._checked = time.monotonic()

    def check(self) -> None:
        """Raise StorageError when the SQLite file is gone or replaced, or a PostgreSQL swap
        was seen already."""
        if self._replaced is not None:
            raise self._replaced
        if self._file is None:
            return
        path, opened = self._file
        now = file_identity(path)
        if now != opened:
            what = "deleted" if now is None else "replaced by another file"
            raise StorageError(
                f"the database {path} was {what} while imagegate ran; new work is refused "
                "because it would be lost",
                backend="sqlite",
                fix="restore the file, or restart imagegate to open the database at that path",
            )

    async def verify(self, engine: AsyncEngine, *, every_s: float = 0.0) -> None:
        """:meth:`check`, and on PostgreSQL read the oid again (when ``every_s`` has passed
        since the last read); raise StorageError when it changed."""
        self.check()
        if self._oid is None or time.monotonic() - self._checked < every_s:
            return
        async with engine.connect() as conn:
            oid = int(await conn.scalar(_PG_OID) or 0)
        self._checked = time.monotonic()
        if oid != self._oid:
            self._replaced = StorageError(
                f"the database {self._name!r} was dropped and created again (or restored) "
                "while imagegate ran; new work is refused because the jobs it held are gone",
                backend="postgresql",
                fix="restart every imagegate process to open the new database",
            )
            raise self._replaced
