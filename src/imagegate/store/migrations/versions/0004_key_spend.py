"""What each managed key has spent in its current budget period, kept beside the key.

A key's budget check read the sum of its jobs' cost over the whole period on every request,
which grew with the key's traffic (a month of jobs); now it reads one row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # spent_since stays empty: the first budget check of each key sums its jobs once.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("spent", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("spent_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("spent_since")
        batch.drop_column("spent")
