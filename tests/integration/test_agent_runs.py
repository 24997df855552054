"""Agents run end to end: a real control plane, a real executor, a scripted model, real
tools, over gRPC on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from dataplane.runstore.database import open_run_database
from dataplane.runstore.schema import runs
from dataplane.runstore.store import RunStore
from dataplane.server import Executor
from dataplane.settings import Settings as ExecutorSettings
from pilothouse.v1 import (
    agent_pb2,
    api_key_pb2,
    discovery_pb2,
    model_pb2,
    prompt_pb2,
    run_pb2,
    run_pb2_grpc,
    tool_pb2,
)
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.mcp_server import OrdersMcp
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.fakes.tool_server import RefundTool

Code = grpc.StatusCode


@dataclass
class Stage:
    live: Live
    executor: Executor
    channel: grpc.aio.Channel

    @property
    def agents(self) -> run_pb2_grpc.AgentServiceStub:
        return run_pb2_grpc.AgentServiceStub(self.channel)

    async def client_key(self, tenant: str, role: int = api_key_pb2.ROLE_CLIENT) -> str:
        """A key of ``tenant`` (a client's unless ``role`` says otherwise) that the
        executor knows already."""
        key = await self.live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=role, tenant=f"tenants/{tenant}")
            ),
            metadata=self.live.md(),
        )
        await self.live.plane.publisher.refresh()
        await self.executor.watcher.wait_for(
            lambda c: c.get(discovery_pb2.ApiKeyDigest, key.api_key.name) is not None, 5
        )
        return key.secret

    async def settled(self) -> None:
        """The executor holds the control plane's current configuration."""
        await self.live.plane.publisher.refresh()
        version = self.live.plane.publisher.current.version
        await self.executor.watcher.wait_for(lambda c: c.version == version, 5)


@contextlib.asynccontextmanager
async def stage(
    live: Live,
    run_store_url: str,
    tmp_path: Path,
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    **settings: Any,
) -> AsyncIterator[Stage]:
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    # The fakes (model server, tools, MCP) listen on loopback.
    settings.setdefault("allow_egress", ("127.0.0.1",))
    executor = await Executor.start(
        ExecutorSettings(
            api_key=key,
            listen="127.0.0.1:0",
            control_plane=live.address,
            node_id=f"exec-{os.urandom(3).hex()}",
            state_dir=tmp_path,
            run_store_url=run_store_url,
            shutdown_grace=1.0,
            **settings,
        ),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    channel = grpc.aio.insecure_channel(executor.address)
    try:
        yield Stage(live, executor, channel)
    finally:
        await channel.close()
        await executor.aclose()


def calculator() -> tool_pb2.Tool:
    calc = tool_pb2.Tool(
        description="Evaluate arithmetic",
        kind=tool_pb2.TOOL_KIND_BUILTIN,
        endpoint="calculator",
    )
    calc.input_schema.update(
        {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        }
    )
    calc.annotations.read_only_hint = True
    return calc


async def deploy(
    live: Live,
    tenant: str,
    *,
    tools: dict[str, tool_pb2.Tool],
    model: model_pb2.Model,
    agent: agent_pb2.Agent,
    model_id: str = "small",
    prompt_id: str = "support",
    agent_id: str = "helper",
) -> None:
    """Register in ``tenant`` its tools, a model with the route "default" to it, a prompt
    whose production label points at a version on that route, and ``agent`` over them."""
    parent = f"tenants/{tenant}"
    md = live.md()
    for tool_id, tool in tools.items():
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=parent, tool_id=tool_id, tool=tool), metadata=md
        )
    await live.models.CreateModel(
        model_pb2.CreateModelRequest(parent=parent, model_id=model_id, model=model), metadata=md
    )
    await live.models.CreateModelRoute(
        model_pb2.CreateModelRouteRequest(
            parent=parent, model_route_id="default", model_route=h.route(tenant, model_id)
        ),
        metadata=md,
    )
    await live.prompts.CreatePrompt(
        prompt_pb2.CreatePromptRequest(
            parent=parent, prompt_id=prompt_id, prompt=prompt_pb2.Prompt()
        ),
        metadata=md,
    )
    version = await live.prompts.CreatePromptVersion(
        prompt_pb2.CreatePromptVersionRequest(
            parent=f"{parent}/prompts/{prompt_id}", prompt_version=h.version(tenant, "default")
        ),
        metadata=md,
    )
    await live.prompts.SetPromptLabel(
        prompt_pb2.SetPromptLabelRequest(
            name=f"{parent}/prompts/{prompt_id}",
            label="production",
            version=version.prompt_version.name,
        ),
        metadata=md,
    )
    await live.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(parent=parent, agent_id=agent_id, agent=agent), metadata=md
    )


async def support_agent(
    live: Live,
    *,
    approval: bool = False,
    max_steps: int = 0,
    tool: tool_pb2.Tool | None = None,
    arguments: dict[str, str] | None = None,
    model: model_pb2.Model | None = None,
) -> str:
    """A tenant with a scripted model that calls a tool named calc (the calculator unless
    ``tool`` says otherwise), then answers with its result (unless ``model`` replaces
    it); an agent over it."""
    tenant = await live.new_tenant("run")
    calc = tool or calculator()
    if approval:
        calc.approval = tool_pb2.APPROVAL_MODE_ALWAYS
    if model is None:
        model = h.model()
        first = model.scripted.rules.add(on_step=1)
        first.tool_calls.add(tool="calc").arguments.update(arguments or {"expression": "6 * 7"})
        model.scripted.rules.add(on_step=2, answer="The answer is {{last_tool_result}}")
    agent = h.agent(tenant, "support", ["calc"])
    agent.default_budget.max_steps = max_steps
    await deploy(live, tenant, tools={"calc": calc}, model=model, agent=agent)
    return tenant


def start_request(tenant: str) -> run_pb2.StartRunRequest:
    """An asynchronous run of the support agent's helper."""
    return run_pb2.StartRunRequest(
        agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "Ada"}
    )


def kinds(events: list[run_pb2.RunEvent]) -> list[str]:
    return [e.WhichOneof("event") or "" for e in events]


def run_agent(
    s: Stage, key: str, tenant: str
) -> grpc.aio.UnaryStreamCall[run_pb2.RunAgentRequest, run_pb2.RunAgentResponse]:
    """A run of the support agent's helper, its events read as the caller likes."""
    return s.agents.RunAgent(
        run_pb2.RunAgentRequest(
            agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "A"}
        ),
        metadata=(("authorization", f"Bearer {key}"),),
    )


async def run_to_end(
    s: Stage, key: str, request: run_pb2.RunAgentRequest
) -> list[run_pb2.RunEvent]:
    call = s.agents.RunAgent(request, metadata=(("authorization", f"Bearer {key}"),))
    return [response.event async for response in call]


async def test_run_agent_streams_a_whole_run(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        request = run_pb2.RunAgentRequest(
            agent=f"tenants/{tenant}/agents/helper",
            input="what is six times seven?",
            variables={"customer": "Ada"},
            idempotency_key="q-1",
            budget=agent_pb2.Budget(max_usd="0.50", max_steps=8),
        )
        request.budget.max_wall_time.FromMilliseconds(90_500)
        events = await run_to_end(s, key, request)
        assert kinds(events) == [
            "run_started",
            "step_started",
            "model_call_finished",
            "tool_call_requested",
            "tool_call_finished",
            "step_started",
            "model_call_finished",
            "final_answer",
            "run_stopped",
        ]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        # The limits in force: the caller's, never looser than the agent's.
        budget = events[0].run_started.budget
        assert (budget.max_usd, budget.max_steps, budget.max_tokens) == ("0.5", 8, 0)
        assert budget.max_wall_time.ToMilliseconds() == 90_500
        finished = events[4].tool_call_finished
        assert finished.ok and finished.executed and '"result": 42' in finished.result
        assert events[7].final_answer.text == 'The answer is {"result": 42}'
        stopped = events[-1].run_stopped
        assert stopped.reason == run_pb2.STOP_REASON_COMPLETED
        assert stopped.usage.model_calls == 2 and stopped.usage.tool_calls == 1
        assert float(stopped.usage.cost_usd) > 0

        md = (("authorization", f"Bearer {key}"),)
        run = (await s.agents.GetRun(run_pb2.GetRunRequest(name=events[0].run), metadata=md)).run
        assert run.state == run_pb2.RUN_STATE_FINISHED and run.steps == 2
        assert run.final_answer.startswith("The answer is")
        again = await run_to_end(s, key, request)
        assert again[0].run == events[0].run, "the same idempotency key is the same run"
        listed = await s.agents.ListRuns(
            run_pb2.ListRunsRequest(parent=f"tenants/{tenant}"), metadata=md
        )
        assert [r.name for r in listed.runs] == [events[0].run]
        watched = [
            r.event
            async for r in s.agents.WatchRun(
                run_pb2.WatchRunRequest(name=events[0].run, after_sequence=7), metadata=md
            )
        ]
        assert kinds(watched) == ["final_answer", "run_stopped"]

    # The builtin call never waited, so the model reply's checkpoint went with the step's
    # results: one write for the step.
    database = open_run_database(run_database_url)
    try:
        checkpoints, _ = await RunStore(database).history(run.name.rsplit("/", 1)[-1])
    finally:
        await database.aclose()
    assert [cp.step for cp in checkpoints] == [0, 0, 1, 2]
    assert checkpoints[1].created_at == checkpoints[2].created_at


async def test_a_model_reply_is_written_while_its_safe_calls_run(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    """A read-only tool does not wait for the reply's checkpoint, nor the reply's events
    for the tool: the client sees the call requested while the tool still holds it."""
    lookup = await RefundTool(hold_first_call=True).start()
    tool = tool_pb2.Tool(description="look up", kind=tool_pb2.TOOL_KIND_HTTP, endpoint=lookup.url)
    tool.input_schema.update({"type": "object"})
    tool.annotations.read_only_hint = True
    tenant = await support_agent(live, tool=tool, arguments={"amount_usd": "1"})
    try:
        async with stage(live, run_database_url, tmp_path) as s:
            key = await s.client_key(tenant)
            await s.settled()
            call = run_agent(s, key, tenant)
            seen: list[run_pb2.RunEvent] = []
            stream = aiter(call)
            while not seen or kinds(seen)[-1] != "tool_call_requested":
                seen.append((await asyncio.wait_for(anext(stream), 5)).event)
            await asyncio.wait_for(lookup.first_effect_done.wait(), 5)
            assert not lookup.release.is_set(), "the tool is still running"
            md = (("authorization", f"Bearer {key}"),)
            run = await s.agents.GetRun(run_pb2.GetRunRequest(name=seen[0].run), metadata=md)
            assert run.run.usage.model_calls == 1, "the reply is durable before the tool ends"
            lookup.release.set()
            seen += [r.event async for r in stream]
            assert kinds(seen)[-3:] == ["model_call_finished", "final_answer", "run_stopped"]
            assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
            assert lookup.effects == 1
    finally:
        await lookup.aclose()


async def test_a_run_whose_lease_was_taken_stops_calling_the_model(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    """Every model call is written before it is made, fenced: an executor whose run was
    taken over makes no call after the one in flight."""
    fake = await FakeOpenAI(default_delay=0.5).start()
    fake.policy = lambda body: Behaviour(
        tool_calls=[{"name": "calc", "arguments": {"expression": "1 + 1"}}]
    )
    tenant = await support_agent(live, max_steps=20, model=h.openai_model(fake.base_url))
    database = open_run_database(run_database_url)
    try:
        async with stage(live, run_database_url, tmp_path) as s:
            key = await s.client_key(tenant)
            await s.settled()
            call = run_agent(s, key, tenant)
            run_id = (await anext(aiter(call))).event.run.rsplit("/", 1)[-1]
            while not fake.requests:
                await asyncio.sleep(0.01)
            far = datetime.now(UTC) + timedelta(hours=1)
            await database.write(
                lambda conn: conn.execute(
                    runs.update()
                    .where(runs.c.id == run_id)
                    .values(
                        fencing_token=runs.c.fencing_token + 1,
                        lease_owner="another",
                        lease_expires_at=far,
                    )
                )
            )
            await asyncio.sleep(2.5)  # five more model calls' time
            assert len(fake.requests) == 1, "the call in flight, and no more"
            checkpoints, _ = await RunStore(database).history(run_id)
            assert [cp.step for cp in checkpoints] == [0], "the old holder wrote nothing"
            call.cancel()
    finally:
        await database.aclose()
        await fake.aclose()


async def test_an_agent_calls_an_mcp_tool(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    server = await OrdersMcp().start()
    cancel = tool_pb2.Tool(
        description="Cancel an order",
        kind=tool_pb2.TOOL_KIND_MCP,
        endpoint=server.url,
        remote_name="cancel_order",
    )
    cancel.input_schema.update(
        {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
    )
    try:
        tenant = await support_agent(live, tool=cancel, arguments={"order_id": "A7"})
        async with stage(live, run_database_url, tmp_path) as s:
            key = await s.client_key(tenant)
            await s.settled()
            events = await run_to_end(
                s,
                key,
                run_pb2.RunAgentRequest(
                    agent=f"tenants/{tenant}/agents/helper",
                    input="cancel A7",
                    variables={"customer": "Ada"},
                ),
            )
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED, events[-1]
            finished = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
            assert len(finished) == 1 and finished[0].ok, finished
            assert "cancelled A7" in events[-2].final_answer.text
            run_id = events[0].run.rsplit("/", 1)[-1]
            assert server.cancellations == 1
            assert len(server.keys) == 1 and server.keys[0].startswith(f"{run_id}:")
    finally:
        await server.aclose()


async def test_runs_beyond_the_executors_slots_wait_in_the_queue(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    async with stage(live, own_run_database_url, tmp_path, max_concurrent_runs=1) as s:
        key = await s.client_key(tenant)
        await s.settled()
        request = run_pb2.RunAgentRequest(
            agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "Ada"}
        )
        runs = await asyncio.gather(*(run_to_end(s, key, request) for _ in range(4)))
        assert len({events[0].run for events in runs}) == 4
        for events in runs:
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert events[-2].final_answer.text == 'The answer is {"result": 42}'


async def test_every_watcher_of_a_run_sees_all_its_events(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        md = (("authorization", f"Bearer {key}"),)
        started = await s.agents.StartRun(start_request(tenant), metadata=md)

        async def watch() -> list[int]:
            request = run_pb2.WatchRunRequest(name=started.run.name)
            return [r.event.sequence async for r in s.agents.WatchRun(request, metadata=md)]

        seen = await asyncio.gather(*(watch() for _ in range(3)))
        assert seen[0] == list(range(1, len(seen[0]) + 1)) and len(seen[0]) == 9
        assert seen[1] == seen[0] and seen[2] == seen[0]


async def test_refusals(live: Live, run_database_url: str, tmp_path: Path) -> None:
    tenant = await support_agent(live)
    other = await support_agent(live)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        md = (("authorization", f"Bearer {key}"),)
        agent = f"tenants/{tenant}/agents/helper"

        async def first_event(request: run_pb2.RunAgentRequest, metadata: object = md) -> None:
            async for _ in s.agents.RunAgent(request, metadata=metadata):
                break

        err = await h.fails(
            first_event(run_pb2.RunAgentRequest(agent=agent, input="x")), Code.INVALID_ARGUMENT
        )
        assert "variables[customer]" in (err.details() or "")
        await h.fails(
            first_event(run_pb2.RunAgentRequest(agent=f"tenants/{other}/agents/helper", input="x")),
            Code.PERMISSION_DENIED,
        )
        await h.fails(
            first_event(run_pb2.RunAgentRequest(agent=f"tenants/{tenant}/agents/nope", input="x")),
            Code.NOT_FOUND,
        )
        await h.fails(
            first_event(run_pb2.RunAgentRequest(agent=agent), metadata=()), Code.UNAUTHENTICATED
        )
        await h.fails(
            s.agents.GetRun(run_pb2.GetRunRequest(name=f"tenants/{tenant}/runs/nope"), metadata=md),
            Code.NOT_FOUND,
        )


async def test_limits_and_approval_pause(live: Live, run_database_url: str, tmp_path: Path) -> None:
    tenant = await support_agent(live, max_steps=1)
    waiting = await support_agent(live, approval=True)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        waiting_key = await s.client_key(waiting)
        await s.settled()
        events = await run_to_end(
            s,
            key,
            run_pb2.RunAgentRequest(
                agent=f"tenants/{tenant}/agents/helper",
                input="x",
                variables={"customer": "Ada"},
            ),
        )
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_MAX_STEPS

        paused = await run_to_end(
            s,
            waiting_key,
            run_pb2.RunAgentRequest(
                agent=f"tenants/{waiting}/agents/helper",
                input="x",
                variables={"customer": "Ada"},
            ),
        )
        assert kinds(paused)[-1] == "approval_required"
        assert paused[-1].approval_required.tool == "calc"
        md = (("authorization", f"Bearer {waiting_key}"),)
        run = (await s.agents.GetRun(run_pb2.GetRunRequest(name=paused[0].run), metadata=md)).run
        assert run.state == run_pb2.RUN_STATE_WAITING_APPROVAL and run.executor == ""
        cancelled = await s.agents.CancelRun(
            run_pb2.CancelRunRequest(name=paused[0].run), metadata=md
        )
        assert cancelled.run.stop_reason == run_pb2.STOP_REASON_CANCELLED
        watched = [
            r.event
            async for r in s.agents.WatchRun(
                run_pb2.WatchRunRequest(name=paused[0].run), metadata=md
            )
        ]
        assert watched[-1].run_stopped.reason == run_pb2.STOP_REASON_CANCELLED


async def test_start_run_is_picked_up_by_the_pool(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        md = (("authorization", f"Bearer {key}"),)
        started = await s.agents.StartRun(start_request(tenant), metadata=md)
        assert started.created and started.run.state == run_pb2.RUN_STATE_QUEUED
        events = [
            r.event
            async for r in s.agents.WatchRun(
                run_pb2.WatchRunRequest(name=started.run.name), metadata=md
            )
        ]
        assert kinds(events)[-1] == "run_stopped"
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED


async def test_approval_resumes_the_run_and_runs_the_call_once(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    from pilothouse.v1 import approval_pb2

    approved_tenant = await support_agent(live, approval=True)
    denied_tenant = await support_agent(live, approval=True)
    async with stage(live, run_database_url, tmp_path) as s:
        keys = {t: await s.client_key(t) for t in (approved_tenant, denied_tenant)}
        await s.settled()
        paused = {}
        for tenant, key in keys.items():
            events = await run_to_end(
                s,
                key,
                run_pb2.RunAgentRequest(
                    agent=f"tenants/{tenant}/agents/helper",
                    input="x",
                    variables={"customer": "Ada"},
                ),
            )
            assert kinds(events)[-1] == "approval_required"
            paused[tenant] = events[0].run

        async def pending(tenant: str) -> approval_pb2.Approval:
            async with asyncio.timeout(10):
                while True:
                    listed = await live.approvals.ListApprovals(
                        approval_pb2.ListApprovalsRequest(
                            parent=f"tenants/{tenant}", state=approval_pb2.APPROVAL_STATE_PENDING
                        ),
                        metadata=live.md(),
                    )
                    if listed.approvals:
                        return listed.approvals[0]
                    await asyncio.sleep(0.05)

        request = await pending(approved_tenant)
        assert request.run == paused[approved_tenant] and request.tool == "calc"
        from tests.integration.test_cli import cli

        listed = await cli(live, "approvals", "list", "--tenant", approved_tenant)
        assert request.name.rsplit("/", 1)[-1] in listed.out and "pending" in listed.out
        approved = await cli(live, "approvals", "approve", request.name, "--comment", "fine")
        assert approved.code == 0 and approved.out.strip().endswith(": approved"), approved.err
        for _ in range(2):  # approving again changes nothing
            decided = await live.approvals.DecideApproval(
                approval_pb2.DecideApprovalRequest(
                    name=request.name, decision=approval_pb2.DECISION_APPROVE, comment="ok"
                ),
                metadata=live.md(),
            )
            assert decided.approval.state == approval_pb2.APPROVAL_STATE_APPROVED
        await h.fails(
            live.approvals.DecideApproval(
                approval_pb2.DecideApprovalRequest(
                    name=request.name, decision=approval_pb2.DECISION_DENY
                ),
                metadata=live.md(),
            ),
            Code.FAILED_PRECONDITION,
        )
        md = (("authorization", f"Bearer {keys[approved_tenant]}"),)
        async with asyncio.timeout(15):
            events = [
                r.event
                async for r in s.agents.WatchRun(
                    run_pb2.WatchRunRequest(name=paused[approved_tenant]), metadata=md
                )
            ]
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        finished = [e for e in events if e.WhichOneof("event") == "tool_call_finished"]
        assert len(finished) == 1 and finished[0].tool_call_finished.executed
        assert sum(1 for e in events if e.WhichOneof("event") == "model_call_finished") == 2

        denied = await pending(denied_tenant)
        await live.approvals.DecideApproval(
            approval_pb2.DecideApprovalRequest(
                name=denied.name, decision=approval_pb2.DECISION_DENY
            ),
            metadata=live.md(),
        )
        md = (("authorization", f"Bearer {keys[denied_tenant]}"),)
        async with asyncio.timeout(15):
            events = [
                r.event
                async for r in s.agents.WatchRun(
                    run_pb2.WatchRunRequest(name=paused[denied_tenant]), metadata=md
                )
            ]
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        answer = next(e for e in events if e.WhichOneof("event") == "final_answer")
        assert "denied" in answer.final_answer.text, "the model was told of the denial"
        assert not any(
            e.tool_call_finished.executed
            for e in events
            if e.WhichOneof("event") == "tool_call_finished"
        )


async def test_budgets_and_tool_checks(live: Live, run_database_url: str, tmp_path: Path) -> None:
    """A token budget stops a run before the call that could pass it; a tool outside the
    agent's list, or called with invalid arguments, never runs."""
    tight = await support_agent(live)
    agent = f"tenants/{tight}/agents/helper"
    change = agent_pb2.Agent(name=agent)
    change.default_budget.max_tokens = 30
    from google.protobuf import field_mask_pb2

    await live.agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=change, update_mask=field_mask_pb2.FieldMask(paths=["default_budget.max_tokens"])
        ),
        metadata=live.md(),
    )
    rogue = await support_agent(live)
    model = (
        await live.models.GetModel(
            model_pb2.GetModelRequest(name=f"tenants/{rogue}/models/small"), metadata=live.md()
        )
    ).model
    del model.scripted.rules[:]
    wrong = model.scripted.rules.add(on_step=1)
    wrong.tool_calls.add(tool="shell").arguments.update({"cmd": "rm -rf /"})
    wrong.tool_calls.add(tool="calc").arguments.update({"expr": 1})
    model.scripted.rules.add(on_step=2, answer="{{last_tool_result}}")
    await live.models.UpdateModel(
        model_pb2.UpdateModelRequest(
            model=model, update_mask=field_mask_pb2.FieldMask(paths=["scripted"])
        ),
        metadata=live.md(),
    )
    async with stage(live, run_database_url, tmp_path) as s:
        keys = {t: await s.client_key(t) for t in (tight, rogue)}
        await s.settled()
        events = await run_to_end(
            s,
            keys[tight],
            run_pb2.RunAgentRequest(agent=agent, input="x", variables={"customer": "Ada"}),
        )
        stopped = events[-1].run_stopped
        assert stopped.reason == run_pb2.STOP_REASON_BUDGET_EXCEEDED and stopped.detail == "tokens"
        assert stopped.usage.model_calls == 0, "no call that could pass the budget was made"

        events = await run_to_end(
            s,
            keys[rogue],
            run_pb2.RunAgentRequest(
                agent=f"tenants/{rogue}/agents/helper", input="x", variables={"customer": "Ada"}
            ),
        )
        finished = [
            e.tool_call_finished for e in events if e.WhichOneof("event") == "tool_call_finished"
        ]
        assert [(f.tool, f.ok, f.executed) for f in finished] == [
            ("shell", False, False),
            ("calc", False, False),
        ]
        assert "not available to this agent" in finished[0].result
        assert "invalid arguments" in finished[1].result
        assert events[-1].run_stopped.usage.tool_calls == 0


async def test_runs_go_on_while_the_control_plane_is_away(tmp_path: Path) -> None:
    """Take the control plane away: runs keep completing on the last-known-good
    configuration, an executor restarted during the outage serves from its snapshot file,
    and once the control plane is back the executor reconnects and acknowledges."""
    from tests.conftest import start_live
    from tests.integration.test_executor_config import _free_port

    port = _free_port()
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    live = await start_live(url, listen=f"127.0.0.1:{port}")
    admin = live.admin_key
    tenant = await support_agent(live)
    executor_key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    client_key = (
        await live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT, tenant=f"tenants/{tenant}")
            ),
            metadata=live.md(),
        )
    ).secret
    await live.plane.publisher.refresh()
    version = live.plane.publisher.current.version
    settings = ExecutorSettings(
        api_key=executor_key,
        listen="127.0.0.1:0",
        control_plane=live.address,
        node_id="outage-node",
        state_dir=tmp_path,
        run_store_url=f"sqlite:///{tmp_path / 'runs.db'}",
        shutdown_grace=1.0,
        lease_ttl=2.0,
    )
    request = run_pb2.RunAgentRequest(
        agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "Ada"}
    )
    md = (("authorization", f"Bearer {client_key}"),)

    async def run_once(executor: Executor) -> list[run_pb2.RunEvent]:
        async with grpc.aio.insecure_channel(executor.address) as channel:
            stub = run_pb2_grpc.AgentServiceStub(channel)
            return [r.event async for r in stub.RunAgent(request, metadata=md)]

    executor = await Executor.start(settings)
    try:
        await executor.watcher.wait_for(lambda c: c.version == version, 10)
        await live.channel.close()
        await live.plane.aclose()  # the control plane is gone

        events = await run_once(executor)
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        await executor.aclose()

        executor = await Executor.start(settings)  # restarted during the outage
        assert executor.watcher.current is not None
        assert executor.watcher.current.version == version
        events = await run_once(executor)
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED

        back = await start_live(url, listen=f"127.0.0.1:{port}", bootstrap_key=admin)
        try:
            async with asyncio.timeout(15):
                while True:
                    listed = await back.channel.unary_unary(
                        "/pilothouse.v1.ExecutorService/ListExecutors",
                        request_serializer=discovery_pb2.ListExecutorsRequest.SerializeToString,
                        response_deserializer=discovery_pb2.ListExecutorsResponse.FromString,
                    )(discovery_pb2.ListExecutorsRequest(), metadata=back.md(), wait_for_ready=True)
                    status = next((e for e in listed.executors if e.node_id == "outage-node"), None)
                    if (
                        status
                        and status.connected
                        and status.acked_version == listed.current_version
                    ):
                        break
                    await asyncio.sleep(0.1)
        finally:
            await back.channel.close()
            await back.plane.aclose()
    finally:
        await executor.aclose()


async def test_an_approval_nobody_gives_expires_as_a_denial(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    from google.protobuf import field_mask_pb2

    from pilothouse.v1 import approval_pb2

    tenant = await support_agent(live, approval=True)
    agent = f"tenants/{tenant}/agents/helper"
    change = agent_pb2.Agent(name=agent)
    change.approval_policy.timeout.FromMilliseconds(500)
    await live.agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=change, update_mask=field_mask_pb2.FieldMask(paths=["approval_policy.timeout"])
        ),
        metadata=live.md(),
    )
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        md = (("authorization", f"Bearer {key}"),)
        paused = await run_to_end(
            s, key, run_pb2.RunAgentRequest(agent=agent, input="x", variables={"customer": "Ada"})
        )
        assert kinds(paused)[-1] == "approval_required"
        async with asyncio.timeout(20):
            events = [
                r.event
                async for r in s.agents.WatchRun(
                    run_pb2.WatchRunRequest(name=paused[0].run), metadata=md
                )
            ]
        answer = next(e for e in events if e.WhichOneof("event") == "final_answer")
        assert "in time" in answer.final_answer.text
        listed = await live.approvals.ListApprovals(
            approval_pb2.ListApprovalsRequest(parent=f"tenants/{tenant}"), metadata=live.md()
        )
        (request,) = listed.approvals
        assert request.state == approval_pb2.APPROVAL_STATE_EXPIRED
        await h.fails(
            live.approvals.DecideApproval(
                approval_pb2.DecideApprovalRequest(
                    name=request.name, decision=approval_pb2.DECISION_APPROVE
                ),
                metadata=live.md(),
            ),
            Code.FAILED_PRECONDITION,
        )


async def test_the_cli_runs_agents_and_reads_runs(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    from tests.integration.test_cli import cli

    tenant = await support_agent(live)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        common = ("--executor", s.executor.address, "--tenant", tenant)
        ran = await cli(
            live, "run", "helper", "--input", "x", "--var", "customer=Ada", *common, key=key
        )
        assert ran.code == 0, ran.err
        lines = ran.out.strip().splitlines()
        assert "run started" in lines[0] and "stopped: completed" in lines[-1]
        assert any("tool calc ok" in line for line in lines)
        # Operators list runs from the control plane's run index, which telemetry feeds.
        for _ in range(100):
            listed = await cli(live, "runs", "list", *common)
            rows = listed.out.splitlines()[1:-1]
            if rows and "finished" in rows[0]:
                break
            await asyncio.sleep(0.1)
        run_id = rows[0].split()[0]
        got = await cli(live, "runs", "get", run_id, "-o", "json", *common)
        assert '"state": "RUN_STATE_FINISHED"' in got.out
        queued = await cli(
            live,
            "run",
            "helper",
            "--input",
            "x",
            "--var",
            "customer=Ada",
            "--no-follow",
            *common,
            key=key,
        )
        assert queued.code == 0 and queued.out.strip().endswith("started")
        missing = await cli(live, "run", "helper", "--input", "x", *common, key=key)
        assert missing.code == 1 and "variables[customer]" in missing.err
        assert "Traceback" not in missing.err
