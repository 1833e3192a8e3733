"""Alembic migrations: applied on open, reversible, and in step with the models."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from imagegate.store import Store
from imagegate.store.migrate import (
    alembic_config,
    current_revision,
    downgrade,
    schema_diff,
    upgrade,
)

T = TypeVar("T")

TABLES = {
    "alembic_version",
    "api_keys",
    "breakers",
    "image_blobs",
    "image_chunks",
    "images",
    "job_events",
    "jobs",
    "webhook_outbox",
}


def on_connection(data_dir: Path, body: Callable[[Connection], T]) -> T:
    """Open a store in ``data_dir`` and run ``body`` on one of its connections, committed."""

    async def main() -> T:
        async with Store(data_dir) as store, store.engine.begin() as conn:
            return await conn.run_sync(body)

    return asyncio.run(main())


def _state(conn: Connection) -> tuple[str | None, set[str]]:
    return current_revision(conn), set(inspect(conn).get_table_names())


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_the_revisions_form_one_line() -> None:
    """There is exactly one head, so every database migrates to the same schema."""
    script = ScriptDirectory.from_config(alembic_config())
    newest = max(revision.revision for revision in script.walk_revisions())

    assert script.get_heads() == [newest]


def test_opening_migrates_a_blank_database_to_head(tmp_path: Path) -> None:
    """A store opened on a blank database creates every table at the newest revision."""
    assert on_connection(tmp_path, _state) == (_head(), TABLES)


def test_downgrade_to_base_then_upgrade_again(tmp_path: Path) -> None:
    """Every migration reverses cleanly, and the schema can be rebuilt after it."""

    def down_and_up(conn: Connection) -> list[tuple[str | None, set[str]]]:
        downgrade(conn, "base")
        after_down = _state(conn)
        upgrade(conn, "head")
        return [after_down, _state(conn)]

    states = on_connection(tmp_path, down_and_up)

    assert states == [(None, {"alembic_version"}), (_head(), TABLES)]


def test_reopening_a_migrated_database_changes_nothing(tmp_path: Path) -> None:
    """Opening a store a second time finds the schema current and leaves it as it is."""
    on_connection(tmp_path, _state)

    assert on_connection(tmp_path, _state) == (_head(), TABLES)


def test_the_models_match_the_migrated_schema(tmp_path: Path) -> None:
    """Autogenerate finds no difference between the models and the migrated database."""
    assert on_connection(tmp_path, schema_diff) == []


def test_migrations_render_for_postgresql() -> None:
    """Offline, the migrations emit PostgreSQL DDL: BIGINT seeds, JSON, timestamptz."""
    out = io.StringIO()
    cfg = alembic_config("postgresql+psycopg://user:pw@localhost/imagegate", output=out)

    command.upgrade(cfg, "head", sql=True)

    sql = out.getvalue()
    assert "CREATE TABLE jobs" in sql
    assert "seed BIGINT" in sql
    assert "request JSON NOT NULL" in sql
    assert "created_at TIMESTAMP WITH TIME ZONE NOT NULL" in sql
