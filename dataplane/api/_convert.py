"""Runs and run events to ``pilothouse.v1`` messages."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from dataplane.runstore.model import Run, RunEvent, RunState, StopReason
from pilothouse.v1 import run_pb2
from pilothouse.wellknown import timestamp_of

STATES = {
    RunState.QUEUED: run_pb2.RUN_STATE_QUEUED,
    RunState.RUNNING: run_pb2.RUN_STATE_RUNNING,
    RunState.WAITING_APPROVAL: run_pb2.RUN_STATE_WAITING_APPROVAL,
    RunState.FINISHED: run_pb2.RUN_STATE_FINISHED,
}
REASONS = {
    StopReason.NONE: run_pb2.STOP_REASON_UNSPECIFIED,
    StopReason.COMPLETED: run_pb2.STOP_REASON_COMPLETED,
    StopReason.MAX_STEPS: run_pb2.STOP_REASON_MAX_STEPS,
    StopReason.BUDGET_EXCEEDED: run_pb2.STOP_REASON_BUDGET_EXCEEDED,
    StopReason.CANCELLED: run_pb2.STOP_REASON_CANCELLED,
    StopReason.DENIED: run_pb2.STOP_REASON_DENIED,
    StopReason.FAILED: run_pb2.STOP_REASON_FAILED,
    StopReason.DEAD_LETTERED: run_pb2.STOP_REASON_DEAD_LETTERED,
    StopReason.GUARDRAIL: run_pb2.STOP_REASON_GUARDRAIL,
    StopReason.INVALID_OUTPUT: run_pb2.STOP_REASON_INVALID_OUTPUT,
}


def run_name(run: Run) -> str:
    return f"tenants/{run.tenant}/runs/{run.id}"


def run_to_proto(run: Run) -> run_pb2.Run:
    message = run_pb2.Run(
        name=run_name(run),
        agent=run.agent,
        state=STATES[run.state],
        stop_reason=REASONS[run.stop_reason],
        stop_detail=run.stop_detail,
        input=run.request.get("input", ""),
        final_answer=run.final_answer,
        steps=run.step,
        prompt_version=run.request.get("prompt_version", ""),
        idempotency_key=run.idempotency_key or "",
        session_id=run.session_id,
        user_id=run.user_id,
        executor=run.lease_owner,
        attempts=run.attempts,
    )
    json_format.ParseDict(run.usage, message.usage, ignore_unknown_fields=True)
    message.create_time.CopyFrom(timestamp_of(run.created_at))
    message.update_time.CopyFrom(timestamp_of(run.updated_at))
    if run.ended_at is not None:
        message.end_time.CopyFrom(timestamp_of(run.ended_at))
    return message


def event_to_proto(run: Run | str, event: RunEvent) -> run_pb2.RunEvent:
    name = run if isinstance(run, str) else run_name(run)
    try:
        # The payloads the loop writes use the messages' field names, nested messages as
        # dicts and enums by name, which the constructor takes directly: several times
        # cheaper than json_format, and this runs for every event sent to every watcher.
        oneof: dict[str, Any] = {event.type: event.payload}
        return run_pb2.RunEvent(
            run=name, sequence=event.seq, time=timestamp_of(event.time), **oneof
        )
    except (ValueError, TypeError):
        # Not of that shape (an unknown field, a JSON-style value): the JSON mapping,
        # which skips what it does not know.
        message = run_pb2.RunEvent(run=name, sequence=event.seq, time=timestamp_of(event.time))
        json_format.ParseDict(
            event.payload, getattr(message, event.type), ignore_unknown_fields=True
        )
        return message
