"""Rollout analyses, leases of background loops, and runs by end time.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_analyses",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("rollout_id", sa.String(63), nullable=False),
        sa.Column("analysis_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "rollout_id", "analysis_time", name="pk_rollout_analyses"
        ),
    )
    op.create_table(
        "loop_leases",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_loop_leases"),
    )
    op.create_index("ix_run_index_tenant_end_time", "run_index", ["tenant", "end_time"])


def downgrade() -> None:
    op.drop_index("ix_run_index_tenant_end_time", table_name="run_index")
    op.drop_table("loop_leases")
    op.drop_table("rollout_analyses")
