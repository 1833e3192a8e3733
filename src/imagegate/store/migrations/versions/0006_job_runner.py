"""The process that runs an in-process job (``imagegate generate``, the library): ``pid@host``.

A job run in the caller's own process has no backplane to put it back in the queue; when that
process dies (kill -9) the job stayed ``running`` forever. With the mark, the next process that
opens the store on that host ends it as interrupted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("runner", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("runner")
