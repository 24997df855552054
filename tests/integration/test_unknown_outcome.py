"""A call whose outcome is unknown (sent, and no answer: here it times out in flight) of a
tool that is neither read-only nor idempotent is never sent again on the run's own say.
By the tool's policy the run asks a person (retry, mark failed, mark done with a result)
or tells the model the outcome is unknown. The tool server here does not deduplicate, so
a second send would show as a second effect."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from pilothouse.v1 import approval_pb2, run_pb2, tool_pb2
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.tool_server import CountingTool
from tests.integration.test_agent_runs import Stage, deploy, stage
from tests.integration.test_resume_taint import events_until_pause
from tests.integration.test_telemetry import eventually


@pytest.fixture
async def refunds() -> AsyncIterator[CountingTool]:
    tool = await CountingTool(hold=1.5).start()
    yield tool
    await tool.aclose()


def refund_tool(url: str, policy: int = 0, *, idempotent: bool = False) -> tool_pb2.Tool:
    tool = tool_pb2.Tool(
        description="Refund an order",
        kind=tool_pb2.TOOL_KIND_HTTP,
        endpoint=url,
        unknown_outcome=policy,  # type: ignore[arg-type]
    )
    tool.input_schema.update({"type": "object", "properties": {"amount_usd": {"type": "number"}}})
    tool.timeout.FromMilliseconds(300)  # the fake holds its reply longer
    tool.retry_policy.max_attempts = 1
    if idempotent:
        tool.annotations.idempotent_hint = True
    return tool


async def refund_run(live: Live, s: Stage, tool: tool_pb2.Tool) -> tuple[str, str, str]:
    """A tenant whose agent refunds once and answers with the refund's result; a run of
    it started. Its tenant, its name and a client key."""
    tenant = await live.new_tenant("unknown")
    model = h.model()
    model.scripted.rules.add(on_step=1).tool_calls.add(tool="refund").arguments.update(
        {"amount_usd": 12.5}
    )
    model.scripted.rules.add(on_step=2, answer="Refund: {{last_tool_result}}")
    await deploy(
        live,
        tenant,
        tools={"refund": tool},
        model=model,
        agent=h.agent(tenant, "support", ["refund"]),
    )
    await s.settled()
    key = await s.client_key(tenant)
    started = await s.agents.StartRun(
        run_pb2.StartRunRequest(
            agent=f"tenants/{tenant}/agents/helper", input="refund", variables={"customer": "A"}
        ),
        metadata=(("authorization", f"Bearer {key}"),),
    )
    return tenant, started.run.name, key


async def filed(live: Live, tenant: str) -> approval_pb2.Approval:
    async def first() -> approval_pb2.Approval | None:
        listed = await live.approvals.ListApprovals(
            approval_pb2.ListApprovalsRequest(parent=f"tenants/{tenant}"), metadata=live.md()
        )
        return listed.approvals[0] if listed.approvals else None

    return await eventually(first)


async def decide(live: Live, name: str, decision: int, result: str = "") -> approval_pb2.Approval:
    decided = await live.approvals.DecideApproval(
        approval_pb2.DecideApprovalRequest(
            name=name,
            decision=decision,  # type: ignore[arg-type]
            comment="checked the ledger",
            result=result,
        ),
        metadata=live.md(),
    )
    return decided.approval


async def test_a_call_that_timed_out_in_flight_waits_for_a_person_and_is_not_sent_again(
    live: Live, own_run_database_url: str, tmp_path: Path, refunds: CountingTool
) -> None:
    async with stage(live, own_run_database_url, tmp_path) as s:
        tenant, run, key = await refund_run(live, s, refund_tool(refunds.url))
        md = (("authorization", f"Bearer {key}"),)
        paused = await events_until_pause(s, run, md)
        waiting = paused[-1].approval_required
        assert waiting.tool == "refund" and "unknown" in waiting.reason, paused[-1]
        approval = await filed(live, tenant)
        assert approval.kind == approval_pb2.APPROVAL_KIND_UNKNOWN_OUTCOME
        assert approval.attempt == 1 and approval.name.endswith(".1.0.1")
        assert "timed out" in approval.reason

        # The decisions of a call waiting to run do not apply; a result goes only with done.
        for decision, result, field in (
            (approval_pb2.DECISION_APPROVE, "", "decision"),
            (approval_pb2.DECISION_MARK_DONE, "", "result"),
            (approval_pb2.DECISION_MARK_DONE, "{not json", "result"),
            (approval_pb2.DECISION_MARK_FAILED, '{"x": 1}', "result"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await decide(live, approval.name, decision, result)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (refused.value.details() or ""), refused.value.details()

        done = await decide(
            live, approval.name, approval_pb2.DECISION_MARK_DONE, '{"refunded": 12.5, "id": 7}'
        )
        assert done.state == approval_pb2.APPROVAL_STATE_RESOLVED
        assert done.decision == approval_pb2.DECISION_MARK_DONE
        rest = await events_until_pause(s, run, md, paused[-1].sequence)
        assert rest[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED, rest[-1]
        got = await s.agents.GetRun(run_pb2.GetRunRequest(name=run), metadata=md)
    finished = [e.tool_call_finished for e in rest if e.HasField("tool_call_finished")]
    assert [(f.tool, f.ok) for f in finished] == [("refund", True)]
    assert json.loads(finished[0].result) == {"refunded": 12.5, "id": 7}
    assert got.run.final_answer == 'Refund: {"id": 7, "refunded": 12.5}'
    assert sum(refunds.effects.values()) == 1, refunds.effects


async def test_a_person_may_retry_or_mark_failed(
    live: Live, own_run_database_url: str, tmp_path: Path, refunds: CountingTool
) -> None:
    async with stage(live, own_run_database_url, tmp_path) as s:
        tenant, run, key = await refund_run(live, s, refund_tool(refunds.url))
        md = (("authorization", f"Bearer {key}"),)
        paused = await events_until_pause(s, run, md)
        first = await filed(live, tenant)
        # A retry sends it again under the same key, and its outcome is unknown again.
        await decide(live, first.name, approval_pb2.DECISION_RETRY)
        again = await events_until_pause(s, run, md, paused[-1].sequence)
        assert "unknown" in again[-1].approval_required.reason

        async def second() -> approval_pb2.Approval | None:
            listed = await live.approvals.ListApprovals(
                approval_pb2.ListApprovalsRequest(
                    parent=f"tenants/{tenant}", state=approval_pb2.APPROVAL_STATE_PENDING
                ),
                metadata=live.md(),
            )
            return listed.approvals[0] if listed.approvals else None

        retried = await eventually(second)
        assert retried.attempt == 2 and retried.name.endswith(".1.0.2")
        assert list(refunds.effects.values()) == [2], "one key, sent twice: a person said so"
        await decide(live, retried.name, approval_pb2.DECISION_MARK_FAILED)
        rest = await events_until_pause(s, run, md, again[-1].sequence)
    assert rest[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
    finished = [e.tool_call_finished for e in rest if e.HasField("tool_call_finished")]
    assert [(f.tool, f.ok) for f in finished] == [("refund", False)]
    assert "marked this call failed: checked the ledger" in finished[0].result
    assert list(refunds.effects.values()) == [2]


async def test_the_fail_policy_tells_the_model_and_an_idempotent_tool_is_retried(
    live: Live, own_run_database_url: str, tmp_path: Path, refunds: CountingTool
) -> None:
    async with stage(live, own_run_database_url, tmp_path) as s:
        policy = tool_pb2.UNKNOWN_OUTCOME_POLICY_FAIL
        tenant, run, key = await refund_run(live, s, refund_tool(refunds.url, policy))
        md = (("authorization", f"Bearer {key}"),)
        events = await events_until_pause(s, run, md)
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED, events[-1]
        finished = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
        assert [(f.tool, f.ok) for f in finished] == [("refund", False)]
        assert "the outcome of this call is unknown (timed out)" in finished[0].result
        assert "not made again" in finished[0].result
        assert list(refunds.effects.values()) == [1]

        # Declared idempotent (its server would dedupe by key): retried, same key, no ask.
        idempotent = refund_tool(refunds.url, idempotent=True)
        idempotent.retry_policy.max_attempts = 2
        other, run, key = await refund_run(live, s, idempotent)
        events = await events_until_pause(s, run, (("authorization", f"Bearer {key}"),))
    assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
    keys = [k for k in refunds.effects if k.startswith(run.rsplit("/", 1)[-1])]
    assert [refunds.effects[k] for k in keys] == [2], "sent twice under one key"
    listed = await live.approvals.ListApprovals(
        approval_pb2.ListApprovalsRequest(parent=f"tenants/{other}"), metadata=live.md()
    )
    assert not listed.approvals and tenant != other
