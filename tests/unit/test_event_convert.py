"""Run events to messages: the direct construction the executor uses agrees with the
JSON mapping for every payload the loop writes, and payloads it cannot take still convert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import json_format, timestamp_pb2

from dataplane.api._convert import event_to_proto
from dataplane.runstore.model import RunEvent, StopReason, stopped
from pilothouse.v1 import run_pb2
from pilothouse.wellknown import timestamp_of

WHEN = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
USAGE = {
    "input_tokens": 30,
    "output_tokens": 7,
    "cached_input_tokens": 0,
    "cost_usd": "0.0000087",
    "model_calls": 2,
    "tool_calls": 1,
}
PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("run_started", {"prompt_version": "tenants/t/prompts/p/versions/3", "config_version": "v9"}),
    ("step_started", {"step": 2}),
    (
        "model_call_finished",
        {
            "step": 2,
            "model": "tenants/t/models/m",
            "input_tokens": 12,
            "output_tokens": 5,
            "cost_usd": "0.000004",
            "finish_reason": "tool_calls",
            "latency_seconds": 0.0123,
            "attempts": 1,
        },
    ),
    ("tool_call_requested", {"step": 2, "call_id": "c1", "tool": "calc", "arguments": "{}"}),
    (
        "tool_call_finished",
        {
            "step": 2,
            "call_id": "c1",
            "tool": "calc",
            "ok": True,
            "executed": True,
            "result": "2",
            "latency_seconds": 0.0,
        },
    ),
    (
        "approval_required",
        {"step": 3, "call_id": "c2", "tool": "refund", "arguments": "{}", "reason": "always"},
    ),
    ("final_answer", {"text": "done"}),
    ("run_stopped", stopped(StopReason.COMPLETED, "", USAGE, steps=2).payload),
    ("run_stopped", stopped(StopReason.BUDGET_EXCEEDED, "max_tokens", steps=1).payload),
]


def by_json_mapping(event: RunEvent) -> run_pb2.RunEvent:
    message = run_pb2.RunEvent(run="tenants/t/runs/r", sequence=event.seq)
    message.time.FromDatetime(event.time)
    json_format.ParseDict(event.payload, getattr(message, event.type))
    return message


@pytest.mark.parametrize(("kind", "payload"), PAYLOADS, ids=[k for k, _ in PAYLOADS])
def test_every_payload_the_loop_writes_converts_as_the_json_mapping_does(
    kind: str, payload: dict[str, Any]
) -> None:
    event = RunEvent(seq=4, time=WHEN, type=kind, payload=payload)
    message = event_to_proto("tenants/t/runs/r", event)
    assert message == by_json_mapping(event)
    assert message.WhichOneof("event") == kind


def test_payloads_with_unknown_fields_or_json_values_still_convert() -> None:
    event = RunEvent(
        seq=1,
        time=WHEN,
        type="model_call_finished",
        payload={"step": 1, "inputTokens": "12", "written_by_a_newer_executor": True},
    )
    message = event_to_proto("tenants/t/runs/r", event)
    assert message.model_call_finished.step == 1
    assert message.model_call_finished.input_tokens == 12
    assert message.time.ToDatetime(UTC) == WHEN


@pytest.mark.parametrize(
    "when",
    [
        WHEN,
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 12, 1, 19, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 1, 0, 0, 0, 5),
    ],
    ids=["utc", "before-epoch", "other-zone", "naive"],
)
def test_timestamps_are_exactly_what_from_datetime_gives(when: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(when)
    assert timestamp_of(when) == expected
