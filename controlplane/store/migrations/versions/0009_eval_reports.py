"""Eval reports.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_reports",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("suite", sa.String(63), nullable=False),
        sa.Column("suite_etag", sa.String(64), nullable=False),
        sa.Column("prompt_version", sa.String(300), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("passed_cases", sa.Integer, nullable=False),
        sa.Column("total_cases", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cases", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_eval_reports"),
    )
    op.create_index("ix_eval_reports_tenant_create_time", "eval_reports", ["tenant", "create_time"])
    op.create_index(
        "ix_eval_reports_suite_version",
        "eval_reports",
        ["tenant", "suite", "prompt_version", "create_time"],
    )


def downgrade() -> None:
    op.drop_index("ix_eval_reports_suite_version", table_name="eval_reports")
    op.drop_index("ix_eval_reports_tenant_create_time", table_name="eval_reports")
    op.drop_table("eval_reports")
