"""Crash safety with real processes: executors share a run store and are killed with
SIGKILL while their calls are in flight.

- A tool whose server deduplicates by Idempotency-Key, declared idempotent, is sent again
  under the same key by the executor that takes the run over: one effect.
- Repeated kills under load, with a tool that does not deduplicate and is not declared
  idempotent: no call is ever sent twice (a call whose outcome is unknown waits for a
  person, who marks it done or failed), and the usage ledger accounts for every model
  call the provider served (a call lost with its executor at its worst case, marked
  estimated)."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from pilothouse.v1 import (
    agent_pb2,
    api_key_pb2,
    approval_pb2,
    model_pb2,
    prompt_pb2,
    run_pb2,
    run_pb2_grpc,
    telemetry_pb2,
    tool_pb2,
)
from pilothouse.v1.telemetry_pb2_grpc import TelemetryServiceStub
from tests import helpers as h
from tests.conftest import Live
from tests.executors import Executor
from tests.executors import start_executor as launch
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.fakes.tool_server import CountingTool, RefundTool
from tests.integration.test_telemetry import eventually


async def refund_agent(
    live: Live, url: str, *, idempotent: bool, model: model_pb2.Model | None = None
) -> str:
    """A tenant whose agent refunds once through ``url``, then answers (by ``model``; a
    scripted one quoting the refund's result unless given)."""
    tenant = await live.new_tenant("crash")
    parent = f"tenants/{tenant}"
    md = live.md()
    refund = tool_pb2.Tool(
        description="Refund an order", kind=tool_pb2.TOOL_KIND_HTTP, endpoint=url
    )
    refund.input_schema.update({"type": "object", "properties": {"amount_usd": {"type": "number"}}})
    refund.annotations.destructive_hint = True
    if idempotent:
        refund.annotations.idempotent_hint = True  # its server dedupes by key
    await live.tools.CreateTool(
        tool_pb2.CreateToolRequest(parent=parent, tool_id="refund", tool=refund), metadata=md
    )
    if model is None:
        model = h.model()
        model.scripted.rules.add(on_step=1).tool_calls.add(tool="refund").arguments.update(
            {"amount_usd": 12.5}
        )
        model.scripted.rules.add(on_step=2, answer="Refunded: {{last_tool_result}}")
    await live.models.CreateModel(
        model_pb2.CreateModelRequest(parent=parent, model_id="m", model=model), metadata=md
    )
    await live.models.CreateModelRoute(
        model_pb2.CreateModelRouteRequest(
            parent=parent, model_route_id="default", model_route=h.route(tenant, "m")
        ),
        metadata=md,
    )
    await live.prompts.CreatePrompt(
        prompt_pb2.CreatePromptRequest(parent=parent, prompt_id="p", prompt=prompt_pb2.Prompt()),
        metadata=md,
    )
    v = await live.prompts.CreatePromptVersion(
        prompt_pb2.CreatePromptVersionRequest(
            parent=f"{parent}/prompts/p",
            prompt_version=prompt_pb2.PromptVersion(
                template="Refund politely.", model_route=f"{parent}/modelRoutes/default"
            ),
        ),
        metadata=md,
    )
    await live.prompts.SetPromptLabel(
        prompt_pb2.SetPromptLabelRequest(
            name=f"{parent}/prompts/p", label="production", version=v.prompt_version.name
        ),
        metadata=md,
    )
    await live.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            parent=parent,
            agent_id="refunder",
            agent=agent_pb2.Agent(prompt=f"{parent}/prompts/p", tools=[f"{parent}/tools/refund"]),
        ),
        metadata=md,
    )
    return tenant


async def start_executor(live: Live, key: str, node: str, state: Path, run_store: str) -> Executor:
    """An executor whose lease on a run lasts a second: a killed one's runs move soon."""
    return await launch(
        live.address, key, node=node, state_dir=state, run_store_url=run_store, lease_ttl=1
    )


async def serving(address: str) -> None:
    """Wait until an executor has its configuration (its health says SERVING)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel, asyncio.timeout(20):
        health = health_pb2_grpc.HealthStub(channel)
        while (await health.Check(health_pb2.HealthCheckRequest())).status != (
            health_pb2.HealthCheckResponse.SERVING
        ):
            await asyncio.sleep(0.05)


async def test_a_killed_executor_run_finishes_elsewhere_without_a_second_effect(
    live: Live, tmp_path: Path
) -> None:
    tool = await RefundTool(hold_first_call=True).start()
    tenant = await refund_agent(live, tool.url, idempotent=True)
    client = (
        await live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT, tenant=f"tenants/{tenant}")
            ),
            metadata=live.md(),
        )
    ).secret
    executor_key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    run_store = f"sqlite:///{tmp_path / 'runs.db'}"
    a = await start_executor(live, executor_key, "exec-a", tmp_path / "a", run_store)
    address_a = a.address
    b = None
    md = (("authorization", f"Bearer {client}"),)
    try:
        async with grpc.aio.insecure_channel(address_a) as channel:
            stub = run_pb2_grpc.AgentServiceStub(channel)
            async with asyncio.timeout(20):
                while True:  # the executor has the client's key once configured
                    try:
                        started = await stub.StartRun(
                            run_pb2.StartRunRequest(
                                agent=f"tenants/{tenant}/agents/refunder", input="refund order 7"
                            ),
                            metadata=md,
                        )
                        break
                    except grpc.aio.AioRpcError as e:
                        if e.code() not in (
                            grpc.StatusCode.UNAUTHENTICATED,
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.NOT_FOUND,
                        ):
                            raise
                        await asyncio.sleep(0.1)
        await asyncio.wait_for(tool.first_effect_done.wait(), 20)
        a.kill()  # the effect happened; its result was never recorded
        await a.exited()

        b = await start_executor(live, executor_key, "exec-b", tmp_path / "b", run_store)
        address_b = b.address
        await serving(address_b)
        tool.release.set()
        async with grpc.aio.insecure_channel(address_b) as channel:
            stub = run_pb2_grpc.AgentServiceStub(channel)
            async with asyncio.timeout(30):
                events = [
                    r.event
                    async for r in stub.WatchRun(
                        run_pb2.WatchRunRequest(name=started.run.name), metadata=md
                    )
                ]
            run = (await stub.GetRun(run_pb2.GetRunRequest(name=started.run.name), metadata=md)).run
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED, events[-1]
        assert run.final_answer.startswith("Refunded:") and run.attempts == 1
        trace = [(e.sequence, e.WhichOneof("event")) for e in events]
        assert tool.effects == 1, f"the refund happened exactly once: {tool.calls} {trace}"
        assert len(tool.calls) == 2 and len(set(tool.calls)) == 1, "retried under the same key"
        assert tool.calls[0] == f"{started.run.name.rsplit('/', 1)[-1]}:1:0"
        # The tool ran alongside the write of the reply that asked for it (it is safe to
        # repeat): if the kill came first, the model was asked again, and the call lost
        # with the executor is billed at its worst case, marked estimated.
        model_calls = [e.model_call_finished for e in events if e.HasField("model_call_finished")]
        estimated = [m for m in model_calls if m.usage_estimated]
        assert len(model_calls) - len(estimated) == 2 and len(estimated) <= 1, trace
    finally:
        for proc in (a, b):
            if proc is not None:
                await proc.stop(20)
        await tool.aclose()


TRIALS = 3
RUNS_PER_TRIAL = 12


def refund_or_answer(body: dict[str, Any]) -> Behaviour:
    """The provider's side of the refund agent: ask for the refund, then answer."""
    if body["messages"][-1]["role"] == "tool":
        return Behaviour(content="Your refund is on its way.")
    return Behaviour(tool_calls=[{"name": "refund", "arguments": {"amount_usd": 12.5}}])


async def start_run(
    live: Live, address: str, tenant: str, md: tuple[tuple[str, str], ...], n: int
) -> str:
    """Queue a run for the pool through the executor at ``address``; its name."""
    async with grpc.aio.insecure_channel(address) as channel, asyncio.timeout(20):
        stub = run_pb2_grpc.AgentServiceStub(channel)
        while True:  # the executor has the client's key once configured
            try:
                started = await stub.StartRun(
                    run_pb2.StartRunRequest(
                        agent=f"tenants/{tenant}/agents/refunder", input=f"refund order {n}"
                    ),
                    metadata=md,
                )
                return started.run.name
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                    raise
                await asyncio.sleep(0.1)


@pytest.mark.timeout(240)
async def test_repeated_kills_send_no_call_twice_and_bill_every_model_call(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    tool = await CountingTool(hold=0.2).start()
    fake = await FakeOpenAI(default_delay=0.2).start()
    fake.policy = refund_or_answer
    model = h.openai_model(fake.base_url)
    tenant = await refund_agent(live, tool.url, idempotent=False, model=model)
    client = await live.new_key(api_key_pb2.ROLE_CLIENT, tenant)
    md = (("authorization", f"Bearer {client}"),)
    executor_key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    store = own_run_database_url
    procs: list[Executor] = []

    async def executor(name: str) -> str:
        proc = await start_executor(live, executor_key, name, tmp_path / name, store)
        procs.append(proc)
        await serving(proc.address)
        return proc.address

    names: list[str] = []
    decided: list[int] = []
    try:
        steady = await executor("steady")
        doomed = await executor("doomed-0")
        for trial in range(TRIALS):
            names += await asyncio.gather(
                *(
                    start_run(live, (steady, doomed)[n % 2], tenant, md, n)
                    for n in range(RUNS_PER_TRIAL)
                )
            )
            # Calls are in flight on both executors (each starts the runs it is given):
            # kill one mid-way.
            await asyncio.sleep(random.uniform(0.05, 0.4))
            procs[-1].kill()
            await procs[-1].exited()
            doomed = await executor(f"doomed-{trial + 1}")

        async def person() -> None:
            """Marks every call whose outcome is unknown done or failed, in turn."""
            while True:
                listed = await live.approvals.ListApprovals(
                    approval_pb2.ListApprovalsRequest(
                        parent=f"tenants/{tenant}", state=approval_pb2.APPROVAL_STATE_PENDING
                    ),
                    metadata=live.md(),
                )
                for approval in listed.approvals:
                    assert approval.kind == approval_pb2.APPROVAL_KIND_UNKNOWN_OUTCOME
                    done = len(decided) % 2 == 0
                    await live.approvals.DecideApproval(
                        approval_pb2.DecideApprovalRequest(
                            name=approval.name,
                            decision=approval_pb2.DECISION_MARK_DONE
                            if done
                            else approval_pb2.DECISION_MARK_FAILED,
                            result='{"refunded": 12.5}' if done else "",
                        ),
                        metadata=live.md(),
                    )
                    decided.append(approval.attempt)
                await asyncio.sleep(0.2)

        deciding = asyncio.create_task(person())
        async with grpc.aio.insecure_channel(steady) as channel:
            stub = run_pb2_grpc.AgentServiceStub(channel)

            async def finished(name: str) -> run_pb2.Run | None:
                run = (await stub.GetRun(run_pb2.GetRunRequest(name=name), metadata=md)).run
                return run if run.state == run_pb2.RUN_STATE_FINISHED else None

            runs = [await eventually(lambda n=name: finished(n), timeout=90) for name in names]
        deciding.cancel()
        assert {r.stop_reason for r in runs} == {run_pb2.STOP_REASON_COMPLETED}
        assert any(r.attempts > 0 for r in runs), "the killed executors' runs moved on"
        assert tool.duplicated == {}, f"calls sent twice: {tool.duplicated}"
        assert len(tool.effects) <= len(runs)
        assert all(attempt == 1 for attempt in decided)

        # The ledger, once the outbox is delivered, holds every model call of every run:
        # all the provider served, and any lost before it reached the provider.
        async def delivered() -> telemetry_pb2.UsageRow | None:
            usage = await TelemetryServiceStub(live.channel).QueryUsage(
                telemetry_pb2.QueryUsageRequest(parent=f"tenants/{tenant}"), metadata=live.md()
            )
            total = sum(r.usage.model_calls for r in runs)
            return usage.rows[0] if usage.rows and usage.rows[0].model_calls == total else None

        row = await eventually(delivered, timeout=60)
        served = len(fake.requests)
        assert row.model_calls >= served, (row, served)
        assert row.model_calls - row.estimated_model_calls <= served, (row, served)
        assert Decimal(row.cost_usd) == sum(Decimal(r.usage.cost_usd) for r in runs)
        print(
            f"kill trials: {TRIALS} kills, {len(runs)} runs, "
            f"{sum(r.attempts > 0 for r in runs)} moved on, {len(decided)} outcomes unknown, "
            f"{sum(tool.effects.values())} effects, 0 twice; provider served {served}, "
            f"ledger {row.model_calls} model calls ({row.estimated_model_calls} estimated)"
        )
    finally:
        for proc in procs:
            await proc.stop(20)
        await tool.aclose()
        await fake.aclose()
