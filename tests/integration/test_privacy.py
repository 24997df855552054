"""Privacy by default: a corpus of personal data and secrets pushed through every path of
a run (its input, the model's tool arguments and answers, tool results, an approval, a
guardrail stop) is found in nothing that leaves the executor (spans, metrics, logs,
telemetry, audit records, approval requests) nor anything the control plane stores; with
the tenant's capture on, spans carry the content, redacted."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from controlplane.store.schema import metadata
from dataplane.runstore.store import RunStore
from pilothouse.v1 import (
    agent_pb2,
    approval_pb2,
    run_pb2,
    tenant_pb2,
    tool_pb2,
)
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.fakes.tool_server import DocumentTool, RefundTool
from tests.integration.test_agent_runs import deploy, run_to_end, stage
from tests.integration.test_guardrails import guarded_agent
from tests.integration.test_telemetry import eventually, finished_summary
from tests.unit.test_pii import CORPUS

VALUES = [v for values in CORPUS.values() for v in values]
TEXT = " | ".join(VALUES)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.__dict__}")


def leaks(text: str) -> list[str]:
    return [v for v in VALUES if v in text]


async def control_plane_rows(live: Live) -> str:
    """Every row of every table of the control plane's database, as text."""
    out = []
    async with live.plane.db.snapshot() as conn:
        for table in metadata.sorted_tables:
            rows = await conn.execute(sa.select(table))
            out += [repr(tuple(r)) for r in rows]
    return "\n".join(out)


@pytest.fixture
async def servers() -> Any:
    fake = await FakeOpenAI().start()
    document = await DocumentTool(document=f"Customer record: {TEXT}").start()
    refund = await RefundTool().start()
    webhook = await RefundTool().start()
    yield fake, document, refund, webhook
    for server in (fake, document, refund, webhook):
        await server.aclose()


def model_script(fake: FakeOpenAI, *, refund: bool) -> None:
    """Look the customer up, refund (a call that waits for a person) with the data in
    the arguments when ``refund``, then answer with the data."""

    def decide(body: dict[str, Any]) -> Behaviour:
        tools = sum(m["role"] == "tool" for m in body["messages"])
        if tools == 0:
            return Behaviour(tool_calls=[{"name": "lookup", "arguments": {"who": TEXT}}])
        if tools == 1 and refund:
            return Behaviour(tool_calls=[{"name": "refund", "arguments": {"note": TEXT}}])
        return Behaviour(content=f"Found {TEXT}")

    fake.policy = decide


async def test_nothing_private_leaves_an_executor_by_default(
    live: Live, own_run_database_url: str, tmp_path: Path, servers: Any
) -> None:
    fake, document, refund, webhook = servers
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    logs = Captured()
    logging.getLogger().addHandler(logs)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        tenant = await guarded_agent(
            live,
            fake,
            document=document,
            refund=refund,
            webhook=webhook,
            guardrails=agent_pb2.GuardrailPolicy(blocked_patterns=["(?i)never say this"]),
        )
        # The refund always waits for a person.
        got = await live.tools.GetTool(
            tool_pb2.GetToolRequest(name=f"tenants/{tenant}/tools/refund"), metadata=live.md()
        )
        got.tool.approval = tool_pb2.APPROVAL_MODE_ALWAYS
        await live.tools.UpdateTool(tool_pb2.UpdateToolRequest(tool=got.tool), metadata=live.md())
        async with stage(
            live,
            own_run_database_url,
            tmp_path,
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[reader]),
        ) as s:
            key = await s.client_key(tenant)
            await s.settled()
            model_script(fake, refund=True)
            request = run_pb2.RunAgentRequest(
                agent=f"tenants/{tenant}/agents/a", input=TEXT, variables={"customer": TEXT}
            )
            paused = await run_to_end(s, key, request)
            assert paused[-1].WhichOneof("event") == "approval_required"

            async def pending() -> approval_pb2.Approval | None:
                listed = await live.approvals.ListApprovals(
                    approval_pb2.ListApprovalsRequest(parent=f"tenants/{tenant}"),
                    metadata=live.md(),
                )
                return listed.approvals[0] if listed.approvals else None

            approval = await eventually(pending)
            assert "[EMAIL]" in approval.arguments, "the approver sees the call, redacted"
            await live.approvals.DecideApproval(
                approval_pb2.DecideApprovalRequest(
                    name=approval.name, decision=approval_pb2.DECISION_APPROVE
                ),
                metadata=live.md(),
            )
            md = (("authorization", f"Bearer {key}"),)
            async with asyncio.timeout(15):
                events = [
                    r.event
                    async for r in s.agents.WatchRun(
                        run_pb2.WatchRunRequest(name=paused[0].run), metadata=md
                    )
                ]
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            # The run's own caller gets its answer, as it is.
            assert VALUES[0] in events[-2].final_answer.text

            # A guardrail stop, whose detail would quote the answer if anything did.
            fake.policy = None
            fake.then(Behaviour(content=f"Never say this: {TEXT}"))
            blocked = await run_to_end(s, key, request)
            assert blocked[-1].run_stopped.reason == run_pb2.STOP_REASON_GUARDRAIL
            await finished_summary(live, blocked[0].run)
            await finished_summary(live, paused[0].run)
    finally:
        logging.getLogger().removeHandler(logs)
        logging.getLogger().setLevel(previous)

    exported: list[str] = []
    for span in exporter.get_finished_spans():
        exported.append(repr(dict(span.attributes or {})))
        exported += [repr(dict(e.attributes or {})) for e in span.events]
    data = reader.get_metrics_data()
    assert data is not None
    exported += [
        repr(dict(p.attributes))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    ]
    exported += logs.lines
    assert exported and leaks("\n".join(exported)) == []
    stored = await control_plane_rows(live)
    assert tenant in stored and leaks(stored) == []


async def test_captured_content_is_redacted(
    live: Live, own_run_database_url: str, tmp_path: Path, servers: Any
) -> None:
    fake, document, refund, webhook = servers
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tenant = await guarded_agent(live, fake, document=document, refund=refund, webhook=webhook)
    await live.tenants.UpdateTenant(
        tenant_pb2.UpdateTenantRequest(
            tenant=tenant_pb2.Tenant(name=f"tenants/{tenant}", capture_content=True),
            update_mask=field_mask_pb2.FieldMask(paths=["capture_content"]),
        ),
        metadata=live.md(),
    )
    async with stage(live, own_run_database_url, tmp_path, tracer_provider=tracer_provider) as s:
        key = await s.client_key(tenant)
        await s.settled()

        model_script(fake, refund=False)
        done = await run_to_end(
            s,
            key,
            run_pb2.RunAgentRequest(
                agent=f"tenants/{tenant}/agents/a", input=TEXT, variables={"customer": "A"}
            ),
        )
        assert done[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
    spans = exporter.get_finished_spans()
    chats = [sp for sp in spans if sp.name.startswith("chat ")]
    [tool] = [sp for sp in spans if sp.name == "execute_tool lookup"]
    inputs = str(chats[-1].attributes["gen_ai.input.messages"])  # type: ignore[index]
    outputs = str(chats[-1].attributes["gen_ai.output.messages"])  # type: ignore[index]
    assert '"role": "user"' in inputs and "[EMAIL]" in inputs and "[CARD]" in inputs
    assert "Found [EMAIL]" in outputs
    assert "[SECRET]" in str(tool.attributes["gen_ai.tool.call.result"])  # type: ignore[index]
    everything = "\n".join(repr(dict(sp.attributes or {})) for sp in spans)
    assert leaks(everything) == []


async def test_prompt_variables_are_redacted_like_the_input(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    fake = await FakeOpenAI().start()
    try:
        tenant = await live.new_tenant("pii")
        agent = h.agent(
            tenant, "support", [], guardrail_policy=agent_pb2.GuardrailPolicy(redact_pii=True)
        )
        await deploy(live, tenant, tools={}, model=h.openai_model(fake.base_url), agent=agent)
        fake.then(Behaviour(content="Hello!"))
        async with stage(live, run_database_url, tmp_path) as s:
            await s.settled()
            events = await run_to_end(
                s,
                await s.client_key(tenant),
                run_pb2.RunAgentRequest(
                    agent=f"tenants/{tenant}/agents/helper",
                    input="hi, I am ada.lovelace@example.com",
                    variables={"customer": "ada.lovelace@example.com"},
                ),
            )
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            sent = repr(fake.requests)
            assert "lovelace" not in sent and "[EMAIL]" in sent
            run = await RunStore(s.executor.db).get(events[0].run.split("/")[-1])
            assert "lovelace" not in repr(run.request)
    finally:
        await fake.aclose()
