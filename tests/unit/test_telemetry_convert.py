"""Outbox events to the contract's messages: the direct construction the relay uses
agrees with the JSON mapping for every record the executor writes, and a payload the
contract cannot express still leaves, as an audit record of its raw content."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from google.protobuf import json_format

from dataplane.runstore.model import OutboxEvent, Telemetry
from dataplane.telemetry import records
from dataplane.telemetry.relay import to_proto
from pilothouse.v1 import model_pb2, telemetry_pb2

WHEN = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
LABELS = records.RunLabels("tenants/t/agents/a", "tenants/t/prompts/p/versions/3", "node-1", "b")
MODEL = model_pb2.Model(name="tenants/t/models/m", provider=model_pb2.MODEL_PROVIDER_OPENAI)
RECORDS = [
    records.run_opened(LABELS, "v9", trace_id="ab" * 16),
    records.run_opened(LABELS, "v9", WHEN),  # a time as text: the JSON mapping's way
    records.model_usage(
        LABELS,
        step=1,
        model=MODEL,
        input_tokens=12,
        output_tokens=5,
        cached_input_tokens=2,
        cost_usd=Decimal("0.000004"),
        queue_seconds=0.25,
        model_seconds=0.0123,
        attempts=2,
        finish_reason="tool_calls",
        usage_estimated=True,
    ),
    records.tool_usage(
        LABELS, step=1, tool="calc", call_id="c1", ok=True, executed=True, tool_seconds=0.5
    ),
    records.run_waiting(LABELS, step=2, tool="refund"),
]


def _event(record: Telemetry) -> OutboxEvent:
    return OutboxEvent(
        "r1:4", "t", "r1", record.kind, record.kind, record.fields, WHEN, record.executor
    )


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.kind)
def test_the_direct_construction_agrees_with_the_json_mapping(record: Telemetry) -> None:
    event = _event(record)
    expected = telemetry_pb2.TelemetryEvent(
        id="r1:4", run="tenants/t/runs/r1", executor="node-1", sequence=4
    )
    expected.time.FromDatetime(WHEN)
    json_format.ParseDict(event.payload, getattr(expected, event.kind))
    assert to_proto(event) == expected


def test_a_payload_the_contract_cannot_express_leaves_as_an_audit_record() -> None:
    event = _event(Telemetry("model_usage", {"step": 1, "no_such_field": 2}, "node-1"))
    message = to_proto(event)
    assert message.WhichOneof("event") == "audit"
    assert message.audit.action == "telemetry.unreadable"
    assert "no_such_field" in message.audit.details
