"""Alembic, configured in code: the migrations ship inside the package, no alembic.ini."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from imagegate.store.models import Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str | None = None, *, output: TextIO | None = None) -> Config:
    """An Alembic config for the packaged migrations, at ``url`` when given.

    ``output`` receives what Alembic prints, such as the SQL of an offline (``sql=True``) run.
    """
    cfg = Config(output_buffer=output)
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the database behind ``connection`` up to ``revision``."""
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def downgrade(connection: Connection, revision: str = "base") -> None:
    """Migrate the database behind ``connection`` down to ``revision``."""
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, revision)


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for a blank one."""
    return MigrationContext.configure(connection).get_current_revision()


def schema_diff(connection: Connection) -> list[object]:
    """What autogenerate would change to make the database match the models; empty if none."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))
