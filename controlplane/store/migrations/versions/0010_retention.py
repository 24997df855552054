"""Retention: where each audit chain's pruned records end, and indexes for pruning by age.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    with op.batch_alter_table("audit_heads") as batch:
        batch.add_column(sa.Column("pruned_seq", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("pruned_hash", sa.String(64), nullable=False, server_default=GENESIS)
        )
    op.create_index("ix_usage_events_time_us", "usage_events", ["time_us"])
    op.create_index("ix_run_index_end_time", "run_index", ["end_time"])
    op.create_index("ix_rejected_events_time", "rejected_events", ["time"])


def downgrade() -> None:
    op.drop_index("ix_rejected_events_time", "rejected_events")
    op.drop_index("ix_run_index_end_time", "run_index")
    op.drop_index("ix_usage_events_time_us", "usage_events")
    with op.batch_alter_table("audit_heads") as batch:
        batch.drop_column("pruned_hash")
        batch.drop_column("pruned_seq")
