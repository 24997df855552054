"""Feedback on runs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_tenant_run_id", "feedback", ["tenant", "run_id"])
    op.create_index("ix_feedback_tenant_create_time", "feedback", ["tenant", "create_time"])


def downgrade() -> None:
    op.drop_index("ix_feedback_tenant_create_time", table_name="feedback")
    op.drop_index("ix_feedback_tenant_run_id", table_name="feedback")
    op.drop_table("feedback")
