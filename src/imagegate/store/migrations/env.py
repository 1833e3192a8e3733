"""Alembic's environment for imagegate.

The store runs it on every open, handing over its own connection in
``config.attributes["connection"]``; run by hand, it connects to ``sqlalchemy.url`` (async
drivers included) or, offline, prints the SQL. Batch mode is on so that later migrations can
alter SQLite tables.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, engine_from_config, make_url, pool
from sqlalchemy.ext.asyncio import async_engine_from_config

from imagegate.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    section = config.get_section(config.config_ini_section, {})
    engine = async_engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_offline() -> None:
    """Print the SQL instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate over the store's connection, or over a new one to ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError(
            "alembic has no database to migrate; set sqlalchemy.url, or open imagegate's Store"
        )
    if make_url(url).get_dialect().is_async:
        asyncio.run(_run_async())
        return
    section = config.get_section(config.config_ini_section, {})
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
