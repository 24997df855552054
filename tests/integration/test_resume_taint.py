"""A resumed run decides exactly as its first execution would have: a tool result replayed
from the journal is marked untrusted and taints the run as it did the first time, so a
later call of the same step still needs the approval it would have needed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pilothouse.v1 import approval_pb2, run_pb2, tool_pb2
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.tool_server import DocumentTool
from tests.integration.test_agent_runs import Stage, deploy, stage
from tests.integration.test_telemetry import eventually


async def events_until_pause(
    s: Stage, run: str, md: tuple[tuple[str, str], ...], after: int = 0
) -> list[run_pb2.RunEvent]:
    """The run's events after ``after``, up to its next pause or its end."""
    events = []
    request = run_pb2.WatchRunRequest(name=run, after_sequence=after)
    async with asyncio.timeout(20):
        async for r in s.agents.WatchRun(request, metadata=md):
            events.append(r.event)
            if r.event.WhichOneof("event") in ("approval_required", "run_stopped"):
                return events
    return events


async def test_a_replayed_result_taints_the_rest_of_the_step(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    """One step calls lookup (its output taints the run), then refund (always needs a
    person) and notify (needs one once the run is tainted). The refund is denied; the run
    resumes with lookup's result replayed from the journal, and notify must still wait."""
    document = await DocumentTool(document="customer notes").start()
    try:
        tenant = await live.new_tenant("taint")
        lookup = tool_pb2.Tool(
            description="Reads notes", kind=tool_pb2.TOOL_KIND_HTTP, endpoint=document.url
        )
        lookup.input_schema.update({"type": "object"})
        lookup.annotations.read_only_hint = True
        model = h.model()
        calls = model.scripted.rules.add(on_step=1).tool_calls
        calls.add(tool="lookup").arguments.update({})
        calls.add(tool="refund").arguments.update({"text": "refund"})
        calls.add(tool="notify").arguments.update({"text": "tell them"})
        model.scripted.rules.add(on_step=2, answer="done")
        await deploy(
            live,
            tenant,
            tools={
                "lookup": lookup,
                "refund": h.tool(approval=tool_pb2.APPROVAL_MODE_ALWAYS),
                "notify": h.tool(approval=tool_pb2.APPROVAL_MODE_WHEN_UNTRUSTED),
            },
            model=model,
            agent=h.agent(tenant, "support", ["lookup", "refund", "notify"]),
        )
        async with stage(live, own_run_database_url, tmp_path) as s:
            await s.settled()
            key = await s.client_key(tenant)
            md = (("authorization", f"Bearer {key}"),)
            started = await s.agents.StartRun(
                run_pb2.StartRunRequest(
                    agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "A"}
                ),
                metadata=md,
            )
            first = await events_until_pause(s, started.run.name, md)
            assert first[-1].approval_required.tool == "refund"

            async def filed() -> approval_pb2.Approval | None:
                listed = await live.approvals.ListApprovals(
                    approval_pb2.ListApprovalsRequest(parent=f"tenants/{tenant}"),
                    metadata=live.md(),
                )
                return listed.approvals[0] if listed.approvals else None

            refund = await eventually(filed)
            await live.approvals.DecideApproval(
                approval_pb2.DecideApprovalRequest(
                    name=refund.name, decision=approval_pb2.DECISION_DENY
                ),
                metadata=live.md(),
            )
            resumed = await events_until_pause(s, started.run.name, md, first[-1].sequence)
        last = resumed[-1]
        assert last.WhichOneof("event") == "approval_required", resumed
        assert last.approval_required.tool == "notify"
        assert "untrusted" in last.approval_required.reason
        finished = [e.tool_call_finished.tool for e in resumed if e.HasField("tool_call_finished")]
        assert "notify" not in finished
    finally:
        await document.aclose()
