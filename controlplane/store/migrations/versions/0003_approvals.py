"""Approval requests and the counter that orders their decisions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("run", sa.String(36), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("call_index", sa.Integer, nullable=False),
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(64), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("decide_time", TS, nullable=True),
        sa.Column("decision_seq", sa.BigInteger, nullable=True),
        sa.Column("expire_time", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_approvals"),
        sa.UniqueConstraint("decision_seq", name="uq_approvals_decision_seq"),
    )
    op.create_index("ix_approvals_pending_expiry", "approvals", ["state", "expire_time"])
    table = op.create_table(
        "counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )
    op.bulk_insert(table, [{"name": "approval_decisions", "value": 0}])


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("approvals")
