"""OpenTelemetry on a real executor: a run's spans and attributes after the GenAI
semantic conventions, in the trace the client's gRPC metadata named and whose id the
control plane's run index shows; the metrics with the conventions' buckets; no text of
the run in any of it; and nothing exported unless configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dataplane.telemetry.export import providers_from_environment
from dataplane.telemetry.otel import DURATION_BUCKETS, TOKEN_BUCKETS
from pilothouse.v1 import run_pb2
from tests.conftest import Live
from tests.integration.test_agent_runs import run_to_end, stage, support_agent
from tests.integration.test_telemetry import finished_summary

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
QUESTION = "what is six times seven, for customer K-55219?"


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_a_run_is_one_trace_of_genai_spans_and_metrics(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    tenant = await support_agent(live)
    async with stage(
        live,
        own_run_database_url,
        tmp_path,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as s:
        key = await s.client_key(tenant)
        await s.settled()
        call = s.agents.RunAgent(
            run_pb2.RunAgentRequest(
                agent=f"tenants/{tenant}/agents/helper",
                input=QUESTION,
                variables={"customer": "Ada"},
            ),
            metadata=(
                ("authorization", f"Bearer {key}"),
                ("traceparent", f"00-{TRACE}-{PARENT}-01"),
            ),
        )
        events = [response.event async for response in call]
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        untraced = await run_to_end(
            s,
            key,
            run_pb2.RunAgentRequest(
                agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "A"}
            ),
        )
        summary = await finished_summary(live, events[0].run)
        other = await finished_summary(live, untraced[0].run)

    spans = exporter.get_finished_spans()
    [root] = [
        sp
        for sp in spans
        if sp.name == "invoke_agent helper" and sp.context.trace_id == int(TRACE, 16)
    ]
    assert root.parent is not None and root.parent.span_id == int(PARENT, 16)
    a = attributes(root)
    assert a["gen_ai.operation.name"] == "invoke_agent"
    assert a["gen_ai.agent.id"] == f"tenants/{tenant}/agents/helper"
    assert a["pilothouse.tenant"] == tenant and a["pilothouse.stop_reason"] == "completed"
    assert a["pilothouse.prompt_version"].startswith(f"tenants/{tenant}/prompts/support/versions/")
    children = [
        sp for sp in spans if sp.parent is not None and sp.parent.span_id == root.context.span_id
    ]
    chats = [sp for sp in children if sp.name.startswith("chat ")]
    [tool] = [sp for sp in children if sp.name == "execute_tool calc"]
    assert len(chats) == 2
    for chat in chats:
        c = attributes(chat)
        assert c["gen_ai.operation.name"] == "chat"
        assert c["gen_ai.provider.name"] == "pilothouse.scripted"
        assert c["gen_ai.request.model"] and c["gen_ai.response.id"].startswith("scripted-")
        assert c["gen_ai.usage.input_tokens"] > 0 and c["gen_ai.usage.output_tokens"] > 0
        assert c["gen_ai.request.max_tokens"] == 4096
    assert attributes(chats[0])["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert attributes(chats[1])["gen_ai.response.finish_reasons"] == ("stop",)
    t = attributes(tool)
    assert t["gen_ai.operation.name"] == "execute_tool" and t["gen_ai.tool.name"] == "calc"
    assert t["gen_ai.tool.call.id"] == "call_1_0" and t["gen_ai.tool.type"] == "function"

    # No text of the run: not the question, not the tool's arguments, not the answer.
    for sp in spans:
        for value in attributes(sp).values():
            text = str(value)
            assert "six times seven" not in text and "K-55219" not in text
            assert "6 * 7" not in text and "The answer is" not in text

    # The trace id reached the control plane's run index; a run started without one
    # got a trace of its own.
    assert summary.trace_id == TRACE
    assert len(other.trace_id) == 32 and other.trace_id != TRACE
    assert any(sp.context.trace_id == int(other.trace_id, 16) for sp in spans)

    points = metric_points(reader)
    tokens = points["gen_ai.client.token.usage"]
    assert {p.attributes["gen_ai.token.type"] for p in tokens} == {"input", "output"}
    assert list(tokens[0].explicit_bounds) == TOKEN_BUCKETS
    durations = points["gen_ai.client.operation.duration"]
    assert list(durations[0].explicit_bounds) == DURATION_BUCKETS
    assert sum(p.count for p in durations) == 4
    runs = points["pilothouse.runs"]
    assert sum(p.value for p in runs if p.attributes["pilothouse.stop_reason"] == "completed") == 2
    assert "pilothouse.outbox.events" in points and "pilothouse.outbox.oldest.age" in points


def test_nothing_is_exported_unless_configured() -> None:
    assert providers_from_environment({}, service="x", instance="i") == (None, None)
    loopback = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert providers_from_environment(
        {**loopback, "OTEL_SDK_DISABLED": "true"}, service="x", instance="i"
    ) == (None, None)
    traces, meters = providers_from_environment(
        {**loopback, "OTEL_METRICS_EXPORTER": "none", "OTEL_SERVICE_NAME": "exec"},
        service="x",
        instance="i",
    )
    assert traces is not None and meters is None
    assert traces.resource.attributes["service.name"] == "exec"
    assert traces.resource.attributes["service.instance.id"] == "i"
    traces.shutdown()
