"""Quota: tenants' spent USD per window and the leases executors hold.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "quota_accounts",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("day_spent_nano", sa.BigInteger, nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("month_spent_nano", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_quota_accounts"),
    )
    op.create_table(
        "quota_leases",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("executor", sa.String(200), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("usd_nano", sa.BigInteger, nullable=False),
        sa.Column("tokens_per_minute", sa.BigInteger, nullable=False),
        sa.Column("requests_per_minute", sa.BigInteger, nullable=False),
        sa.Column("run_slots", sa.Integer, nullable=False),
        sa.Column("wants_usd_nano", sa.BigInteger, nullable=False),
        sa.Column("wants_tokens_per_minute", sa.BigInteger, nullable=False),
        sa.Column("wants_requests_per_minute", sa.BigInteger, nullable=False),
        sa.Column("wants_run_slots", sa.Integer, nullable=False),
        sa.Column("waiting_usd_nano", sa.BigInteger, nullable=False),
        sa.Column("waiting_since", TS, nullable=True),
        sa.Column("expire_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quota_leases"),
    )
    op.create_index("ix_quota_leases_tenant", "quota_leases", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_quota_leases_tenant", table_name="quota_leases")
    op.drop_table("quota_leases")
    op.drop_table("quota_accounts")
