"""Telemetry: the usage ledger, the run index, relay status, rejected events, and the
id of the telemetry event behind an executor's audit record.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("agent", sa.String(300), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("prompt_version", sa.String(300), nullable=False),
        sa.Column("variant", sa.String(63), nullable=False),
        sa.Column("executor", sa.String(200), nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_pico", sa.BigInteger, nullable=False),
        sa.Column("queue_seconds", sa.Float, nullable=False),
        sa.Column("model_seconds", sa.Float, nullable=False),
        sa.Column("tool_seconds", sa.Float, nullable=False),
        sa.Column("approval_wait_seconds", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_events"),
    )
    op.create_index("ix_usage_events_tenant_time_us", "usage_events", ["tenant", "time_us"])
    op.create_index("ix_usage_events_run_id", "usage_events", ["run_id"])
    op.create_table(
        "run_index",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("agent", sa.String(300), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("stop_reason", sa.String(40), nullable=False),
        sa.Column("stop_detail", sa.Text, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("prompt_version", sa.String(300), nullable=False),
        sa.Column("variant", sa.String(63), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("executor", sa.String(200), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("end_time", TS, nullable=True),
        sa.Column("last_event_time", TS, nullable=False),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "run_id", name="pk_run_index"),
    )
    op.create_index("ix_run_index_tenant_create_time", "run_index", ["tenant", "create_time"])
    op.create_table(
        "relay_status",
        sa.Column("executor", sa.String(200), nullable=False),
        sa.Column("last_seen_time", TS, nullable=False),
        sa.Column("pending_events", sa.BigInteger, nullable=False),
        sa.Column("oldest_pending_time", TS, nullable=True),
        sa.PrimaryKeyConstraint("executor", name="pk_relay_status"),
    )
    op.create_table(
        "rejected_events",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("executor", sa.String(200), nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_events"),
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("event_id", sa.String(80), nullable=True))
        batch.create_unique_constraint("uq_audit_events_event_id", ["event_id"])


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_event_id", type_="unique")
        batch.drop_column("event_id")
    op.drop_table("rejected_events")
    op.drop_table("relay_status")
    op.drop_index("ix_run_index_tenant_create_time", table_name="run_index")
    op.drop_table("run_index")
    op.drop_index("ix_usage_events_run_id", table_name="usage_events")
    op.drop_index("ix_usage_events_tenant_time_us", table_name="usage_events")
    op.drop_table("usage_events")
