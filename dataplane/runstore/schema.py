"""Tables of the run store. Alembic migrations under ``migrations/`` create them."""

from __future__ import annotations

import sqlalchemy as sa

from storekit.types import UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("agent", sa.String(200), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("stop_reason", sa.String(20), nullable=False),
    sa.Column("stop_detail", sa.Text, nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("session_id", sa.String(200), nullable=False),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("usage", sa.Text, nullable=False),
    sa.Column("final_answer", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.String(200), nullable=False),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("fencing_token", sa.BigInteger, nullable=False),
    sa.Column("available_at", UTCDateTime, nullable=False),
    sa.Column("deadline_at", UTCDateTime, nullable=True),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("next_event_seq", sa.BigInteger, nullable=False),
    sa.Column("next_checkpoint_seq", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    # The model call in flight, written before it is made (``UnsettledModelCall``).
    sa.Column("model_call", sa.Text, nullable=False, server_default=""),
    sa.UniqueConstraint("tenant", "idempotency_key"),
    sa.Index("ix_runs_claim_queued", "state", "available_at"),
    sa.Index("ix_runs_claim_orphaned", "state", "lease_expires_at"),
    sa.Index("ix_runs_tenant_created", "tenant", "created_at"),
    sa.Index("ix_runs_ended_at", "ended_at"),
)

# What each checkpoint added to the run's history: replayed in order, they rebuild it.
# Bytes grow with the steps, never with the square of them.
checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column(
        "run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("fencing_token", sa.BigInteger, nullable=False),
    sa.Column("delta", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# The tool-call journal: a call is written before it runs and again when it finishes, so a
# resumed run knows which calls completed (and reuses their results) and which to retry
# under the same idempotency key.
tool_calls = sa.Table(
    "tool_calls",
    metadata,
    sa.Column(
        "run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("call_index", sa.Integer, primary_key=True),
    sa.Column("call_id", sa.String(200), nullable=False),
    sa.Column("tool", sa.String(200), nullable=False),
    sa.Column("arguments", sa.Text, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
)

# A run's events, in order, for clients watching it from any executor of the pool.
run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column(
        "run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)

# The builtin memory tool's entries, one namespace per tenant and agent.
memory = sa.Table(
    "memory",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("agent", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# What must leave the executor, written in the transaction of what it records: the
# telemetry of runs' events and the audit records of their ends. ``id`` names the event
# wherever it goes ("{run}:{sequence}" for a run's event), so whoever receives it takes it
# exactly once. A relay claims a batch (``claimed_by`` until ``claim_expires_at``) and
# deletes it once the control plane has acknowledged it.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("claimed_by", sa.String(200), nullable=False, server_default=""),
    sa.Column("claim_expires_at", UTCDateTime, nullable=True),
    sa.Column("executor", sa.String(200), nullable=False, server_default=""),
    sa.Index("ix_outbox_created_at", "created_at"),
)

__all__ = ["checkpoints", "memory", "metadata", "outbox", "run_events", "runs", "tool_calls"]
