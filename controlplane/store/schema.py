"""Tables of the control-plane store. Alembic migrations under ``migrations/`` create them;
a test checks the two agree."""

from __future__ import annotations

import sqlalchemy as sa

from storekit.types import BigIntId, UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("etag", sa.String(32), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
)

# Every tenant-scoped registry resource, one row each; ``kind`` says which (Tool, Model,
# ModelRoute, Prompt, PromptVersion, Agent, QuotaPolicy). Prompt versions use the id
# "{prompt}/{version}" so a prompt's versions form one key range.
resources = sa.Table(
    "resources",
    metadata,
    sa.Column(
        "tenant",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("id", sa.String(160), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("etag", sa.String(32), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
)

# Which resource names which: the database itself refuses to delete a resource still
# referenced (RESTRICT), even under concurrent writers.
resource_refs = sa.Table(
    "resource_refs",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("from_kind", sa.String(32), primary_key=True),
    sa.Column("from_id", sa.String(160), primary_key=True),
    sa.Column("field", sa.String(200), primary_key=True),
    sa.Column("to_kind", sa.String(32), nullable=False),
    sa.Column("to_id", sa.String(160), nullable=False),
    sa.ForeignKeyConstraint(
        ["tenant", "from_kind", "from_id"],
        ["resources.tenant", "resources.kind", "resources.id"],
        ondelete="CASCADE",
    ),
    sa.ForeignKeyConstraint(
        ["tenant", "to_kind", "to_id"],
        ["resources.tenant", "resources.kind", "resources.id"],
        ondelete="RESTRICT",
    ),
    sa.Index("ix_resource_refs_target", "tenant", "to_kind", "to_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "tenant",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    ),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("expire_time", UTCDateTime, nullable=True),
    # JSON list of the permission scopes the key holds.
    sa.Column("scopes", sa.Text, nullable=False, server_default="[]"),
)

# What changed, who changed it and when. Rows outlive the tenant they concern.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("tenant", sa.String(63), nullable=True, index=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("resource", sa.String(300), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    # The telemetry event an executor reported it in; NULL for the control plane's own.
    sa.Column("event_id", sa.String(80), nullable=True, unique=True),
    # Its place in its chain (the tenant, or "-" for records of no tenant) and its hash
    # (pilothouse.auditchain says how it is made).
    sa.Column("chain", sa.String(63), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("chain", "seq"),
)

# The last record of each audit chain; appending locks it, so a chain never forks, and
# it tells when records were cut from a chain's end. ``pruned_seq`` and ``pruned_hash``
# are the last record retention removed from its start (0 and the genesis hash when
# none was): the chain is checked from the record after it.
audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("chain", sa.String(63), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("pruned_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pruned_hash", sa.String(64), nullable=False, server_default="0" * 64),
)

# One row: bumped by every registry write, in its transaction, so that every replica can
# tell cheaply and exactly whether the configuration executors see may have changed.
registry_revision = sa.Table(
    "registry_revision",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

# What each executor has acknowledged over xDS (one row per xDS node id).
executors = sa.Table(
    "executors",
    metadata,
    sa.Column("node_id", sa.String(200), primary_key=True),
    sa.Column("cluster", sa.String(200), nullable=False),
    sa.Column("connected", sa.Boolean, nullable=False),
    sa.Column("connected_since", UTCDateTime, nullable=False),
    sa.Column("last_seen_time", UTCDateTime, nullable=False),
    sa.Column("acked_version", sa.String(64), nullable=False),
    sa.Column("nacked_versions", sa.Text, nullable=False),
    sa.Column("last_nack_version", sa.String(64), nullable=False),
    sa.Column("last_nack_error", sa.Text, nullable=False),
    sa.Column("last_nack_time", UTCDateTime, nullable=True),
    # The tenant its key is confined to (it sees only that tenant's configuration); ""
    # for a key of every tenant.
    sa.Column("view", sa.String(63), nullable=False, server_default=""),
)

# Tool calls waiting for (or given) a person's decision.
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("id", sa.String(100), primary_key=True),
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
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("decide_time", UTCDateTime, nullable=True),
    sa.Column("decision_seq", sa.BigInteger, nullable=True, unique=True),
    sa.Column("expire_time", UTCDateTime, nullable=False),
    # What the person is asked ("tool_call", "unknown_outcome"), what they decided
    # ("approve", "deny", "retry", "mark_failed", "mark_done"; "" until then), and with
    # "mark_done" the call's result (JSON text).
    sa.Column("kind", sa.String(20), nullable=False, server_default="tool_call"),
    sa.Column("decision", sa.String(20), nullable=False, server_default=""),
    sa.Column("result", sa.Text, nullable=False, server_default=""),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_approvals_pending_expiry", "state", "expire_time"),
)

# Named counters (the order of approval decisions).
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)


# The usage ledger: one row per model call or tool call an executor reported, keyed by
# the event's id, so a report ingested twice is one row. ``time_us`` is the event's time
# in microseconds since the epoch (UTC): ranges and buckets are integer arithmetic, and
# writing a row converts no timestamp. ``cost_pico`` is USD x 10^12, exact (model prices
# have at most 6 decimal places per million tokens).
usage_events = sa.Table(
    "usage_events",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
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
    # The usage is the executor's estimate, not the provider's report.
    sa.Column("estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_usage_events_tenant_time_us", "tenant", "time_us"),
    sa.Index("ix_usage_events_run_id", "run_id"),
    sa.Index("ix_usage_events_time_us", "time_us"),
)

# The run index: each run as the telemetry of every executor tells it. ``last_sequence``
# is the run event that set ``state``: an older event arriving late changes nothing.
run_index = sa.Table(
    "run_index",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("agent", sa.String(300), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("stop_reason", sa.String(40), nullable=False),
    sa.Column("stop_detail", sa.Text, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("prompt_version", sa.String(300), nullable=False),
    sa.Column("variant", sa.String(63), nullable=False),
    sa.Column("trace_id", sa.String(32), nullable=False),
    sa.Column("executor", sa.String(200), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("end_time", UTCDateTime, nullable=True),
    sa.Column("last_event_time", UTCDateTime, nullable=False),
    sa.Column("last_sequence", sa.BigInteger, nullable=False),
    sa.Index("ix_run_index_tenant_create_time", "tenant", "create_time"),
    sa.Index("ix_run_index_tenant_end_time", "tenant", "end_time"),
    sa.Index("ix_run_index_end_time", "end_time"),
)

# Each executor's relay as it last reported: how much waits in its outbox.
relay_status = sa.Table(
    "relay_status",
    metadata,
    sa.Column("executor", sa.String(200), primary_key=True),
    sa.Column("last_seen_time", UTCDateTime, nullable=False),
    sa.Column("pending_events", sa.BigInteger, nullable=False),
    sa.Column("oldest_pending_time", UTCDateTime, nullable=True),
)

# Events the control plane could not take: kept (the event as JSON) and acknowledged.
rejected_events = sa.Table(
    "rejected_events",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("executor", sa.String(200), nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Index("ix_rejected_events_time", "time"),
)


# A tenant's USD spent in its current windows, as executors reported it from their
# leases (nano-USD); the row is also what a lease change locks, so that the tenant's
# leases change one at a time.
quota_accounts = sa.Table(
    "quota_accounts",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("day", sa.String(10), nullable=False),
    sa.Column("day_spent_nano", sa.BigInteger, nullable=False),
    sa.Column("month", sa.String(7), nullable=False),
    sa.Column("month_spent_nano", sa.BigInteger, nullable=False),
)

# Leases of a tenant's limits held by executors. ``usd_nano`` was granted from the
# windows ``day`` and ``month`` and counts against them until it is reported spent, even
# after the lease expires (an executor that died may have spent it); rate shares and
# slots count only until ``expire_time``. ``wants_*`` weigh the fair shares.
# ``waiting_usd_nano`` is USD a call of the executor waits for and was not granted, since
# ``waiting_since``: USD that frees up goes to the longest waiting first.
quota_leases = sa.Table(
    "quota_leases",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
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
    sa.Column("waiting_since", UTCDateTime, nullable=True),
    sa.Column("expire_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.Index("ix_quota_leases_tenant", "tenant"),
)

# What people thought of runs: a score from 0 to 1 and a comment, by the key that said so.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Index("ix_feedback_tenant_run_id", "tenant", "run_id"),
    sa.Index("ix_feedback_tenant_create_time", "tenant", "create_time"),
)

# Each analysis of a rollout: when, at which step, its verdict, and the numbers and
# check results (JSON) it reached them by.
rollout_analyses = sa.Table(
    "rollout_analyses",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("rollout_id", sa.String(63), primary_key=True),
    sa.Column("analysis_time", UTCDateTime, primary_key=True),
    sa.Column("step_index", sa.Integer, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("result", sa.Text, nullable=False),
)

# Reports of eval suites' runs: the score a prompt version reached on a suite as it was
# (its etag), with each case's result (JSON).
eval_reports = sa.Table(
    "eval_reports",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("suite", sa.String(63), nullable=False),
    sa.Column("suite_etag", sa.String(64), nullable=False),
    sa.Column("prompt_version", sa.String(300), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("passed_cases", sa.Integer, nullable=False),
    sa.Column("total_cases", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("cases", sa.Text, nullable=False),
    sa.Index("ix_eval_reports_tenant_create_time", "tenant", "create_time"),
    sa.Index("ix_eval_reports_suite_version", "tenant", "suite", "prompt_version", "create_time"),
)

# Background loops that must run on one control-plane replica at a time: the replica
# holding a loop's row until ``expire_time`` runs it, renewing as it goes.
loop_leases = sa.Table(
    "loop_leases",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expire_time", UTCDateTime, nullable=False),
)

# Every key ever registered from PILOTHOUSE_BOOTSTRAP_KEY, kept after the key itself is
# revoked: a bootstrap key is registered once, so a revoked one cannot come back when a
# replica restarts with the variable still set.
bootstrap_keys = sa.Table(
    "bootstrap_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("register_time", UTCDateTime, nullable=False),
)
