"""Telemetry between the contract and the domain: a relay's batch in, usage sums and
run summaries out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from google.protobuf import json_format, timestamp_pb2

from controlplane.api._convert import _timestamp
from controlplane.store.telemetry import Freshness, UsageSum
from controlplane.telemetry.records import (
    FINISHED,
    QUEUED,
    RUNNING,
    WAITING_APPROVAL,
    Batch,
    ExecutorAudit,
    Rejected,
    RunChange,
    UsageRecord,
)
from controlplane.telemetry.service import RunSummary
from pilothouse.decimals import plain
from pilothouse.v1 import run_pb2
from pilothouse.v1 import telemetry_pb2 as pb

_RUN_NAME = re.compile(r"^tenants/([a-z0-9][a-z0-9-]{0,62})/runs/([A-Za-z0-9-]{1,36})$")
# An audit record that concerns no run names its tenant alone (and no run: the empty group).
_TENANT_NAME = re.compile(r"^tenants/([a-z0-9][a-z0-9-]{0,62})()$")
MAX_ID = 80

STATES = {
    QUEUED: run_pb2.RUN_STATE_QUEUED,
    RUNNING: run_pb2.RUN_STATE_RUNNING,
    WAITING_APPROVAL: run_pb2.RUN_STATE_WAITING_APPROVAL,
    FINISHED: run_pb2.RUN_STATE_FINISHED,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return _EPOCH + timedelta(microseconds=_micros(ts))


def _cost(text: str) -> Decimal:
    try:
        return Decimal(text or "0")
    except InvalidOperation:
        raise ValueError(f"model_usage.cost_usd {text!r} is not a decimal") from None


def batch_from_proto(request: pb.StreamEventsRequest) -> tuple[Batch, set[str]]:
    """The batch, its events sorted by what they feed (events that cannot be read set
    aside as rejected), and the tenants it names."""
    batch = Batch(request.executor, pending_events=max(request.pending_events, 0))
    if request.HasField("oldest_pending_time"):
        batch.oldest_pending_time = _time(request.oldest_pending_time)
    tenants: set[str] = set()
    for event in request.events:
        try:
            tenants.add(_sort(event, batch))
        except ValueError as e:  # the event cannot be taken; the message says why
            batch.rejected.append(
                Rejected(event.id[:MAX_ID] or "(no id)", str(e), json_format.MessageToJson(event))
            )
    return batch, tenants


def _sort(event: pb.TelemetryEvent, batch: Batch) -> str:
    """Put ``event`` where it goes in ``batch``; its tenant."""
    if not event.id or len(event.id) > MAX_ID:
        raise ValueError(f"id must be 1 to {MAX_ID} characters")
    match = _RUN_NAME.match(event.run)
    if match is None and event.WhichOneof("event") == "audit":
        match = _TENANT_NAME.match(event.run)  # an audit record of no run
    if match is None:
        raise ValueError(f"run {event.run!r} is not tenants/{{tenant}}/runs/{{run}}")
    if not event.HasField("time"):
        raise ValueError("time is required")
    tenant, run_id = match.groups()
    micros = _micros(event.time)
    time = _EPOCH + timedelta(microseconds=micros)
    kind = event.WhichOneof("event")
    if kind == "run_opened":
        opened = event.run_opened
        batch.runs.append(
            RunChange(
                tenant,
                run_id,
                event.sequence,
                time,
                RUNNING,
                executor=event.executor,
                agent=opened.agent,
                prompt_version=opened.prompt_version,
                variant=opened.variant,
                trace_id=opened.trace_id,
                create_time=_time(opened.create_time) if opened.HasField("create_time") else None,
            )
        )
    elif kind == "model_usage":
        m = event.model_usage
        batch.add_usage(
            UsageRecord(
                event.id,
                tenant,
                micros,
                "model",
                run_id,
                m.step,
                m.agent,
                event.executor,
                prompt_version=m.prompt_version,
                variant=m.variant,
                model=m.model,
                provider=m.provider,
                input_tokens=m.input_tokens,
                output_tokens=m.output_tokens,
                cached_input_tokens=m.cached_input_tokens,
                cost_usd=_cost(m.cost_usd),
                queue_seconds=m.queue_seconds,
                model_seconds=m.model_seconds,
                estimated=m.usage_estimated,
            ),
            _under_way(event, tenant, run_id, time, m.agent, m.prompt_version, m.step),
        )
    elif kind == "tool_usage":
        t = event.tool_usage
        batch.add_usage(
            UsageRecord(
                event.id,
                tenant,
                micros,
                "tool",
                run_id,
                t.step,
                t.agent,
                event.executor,
                prompt_version=t.prompt_version,
                variant=t.variant,
                tool=t.tool,
                queue_seconds=t.queue_seconds,
                tool_seconds=t.tool_seconds,
                approval_wait_seconds=t.approval_wait_seconds,
            ),
            _under_way(event, tenant, run_id, time, t.agent, t.prompt_version, t.step),
        )
    elif kind == "run_queued":
        batch.runs.append(RunChange(tenant, run_id, 0, time, QUEUED, agent=event.run_queued.agent))
    elif kind == "run_waiting":
        batch.runs.append(
            RunChange(
                tenant,
                run_id,
                event.sequence,
                time,
                WAITING_APPROVAL,
                executor=event.executor,
                steps=max(event.run_waiting.step - 1, 0),
            )
        )
    elif kind == "run_ended":
        ended = event.run_ended
        batch.runs.append(
            RunChange(
                tenant,
                run_id,
                event.sequence,
                time,
                FINISHED,
                executor=event.executor,
                steps=ended.steps,
                stop_reason=run_pb2.StopReason.Name(ended.reason)
                .removeprefix("STOP_REASON_")
                .lower(),
                stop_detail=ended.detail,
                end_time=time,
            )
        )
    elif kind == "audit":
        batch.audits.append(
            ExecutorAudit(
                event.id,
                tenant,
                time,
                event.executor,
                event.audit.action,
                event.audit.resource or event.run,
                event.audit.details or "{}",
            )
        )
    else:
        raise ValueError("the event carries nothing this control plane knows")
    return tenant


def _under_way(
    event: pb.TelemetryEvent,
    tenant: str,
    run_id: str,
    time: datetime,
    agent: str,
    prompt_version: str,
    step: int,
) -> RunChange:
    """A usage record's run change: step ``step`` is under way, those before it done."""
    return RunChange(
        tenant,
        run_id,
        event.sequence,
        time,
        RUNNING,
        executor=event.executor,
        agent=agent,
        prompt_version=prompt_version,
        steps=max(step - 1, 0),
    )


def freshness_to_proto(f: Freshness) -> pb.IndexFreshness:
    message = pb.IndexFreshness(
        pending_events=f.pending_events, reporting_executors=f.reporting_executors
    )
    _timestamp(message.last_ingest_time, f.last_ingest_time)
    _timestamp(message.oldest_pending_time, f.oldest_pending_time)
    return message


def usage_row_to_proto(row: UsageSum) -> pb.UsageRow:
    group = dict(row.group)
    run = group.pop("run_id", "")
    message = pb.UsageRow(
        bucket_start=timestamp_pb2.Timestamp(seconds=row.bucket_start_s),
        model_calls=row.model_calls,
        tool_calls=row.tool_calls,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cached_input_tokens=row.cached_input_tokens,
        cost_usd=_decimal_text(row.cost_usd),
        queue_seconds=row.queue_seconds,
        model_seconds=row.model_seconds,
        tool_seconds=row.tool_seconds,
        approval_wait_seconds=row.approval_wait_seconds,
        estimated_model_calls=row.estimated_model_calls,
        estimated_cost_usd=_decimal_text(row.estimated_cost_usd),
        **group,
    )
    if run:
        message.run = f"tenants/{group['tenant']}/runs/{run}"
    return message


def _decimal_text(value: Decimal) -> str:
    return plain(value)


def run_summary_to_proto(summary: RunSummary) -> pb.RunSummary:
    row, totals = summary.row, summary.totals
    message = pb.RunSummary(
        name=f"tenants/{row.tenant}/runs/{row.run_id}",
        agent=row.agent,
        state=STATES.get(row.state, run_pb2.RUN_STATE_UNSPECIFIED),
        stop_reason=run_pb2.StopReason.Value(f"STOP_REASON_{row.stop_reason.upper()}")
        if row.stop_reason
        else run_pb2.STOP_REASON_UNSPECIFIED,
        stop_detail=row.stop_detail,
        steps=row.steps,
        usage=run_pb2.RunUsage(
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            cached_input_tokens=totals.cached_input_tokens,
            cost_usd=_decimal_text(totals.cost_usd),
            model_calls=totals.model_calls,
            tool_calls=totals.tool_calls,
        ),
        prompt_version=row.prompt_version,
        variant=row.variant,
        trace_id=row.trace_id,
        executor=row.executor,
    )
    _timestamp(message.create_time, row.create_time)
    _timestamp(message.last_event_time, row.last_event_time)
    _timestamp(message.end_time, row.end_time)
    return message
