"""Crash safety with real processes: two executors share a run store; one is killed
after a non-idempotent tool's effect and before its result is checkpointed; the other
finishes the run, and the tool saw exactly one effect."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc

from pilothouse.v1 import (
    agent_pb2,
    api_key_pb2,
    model_pb2,
    prompt_pb2,
    run_pb2,
    run_pb2_grpc,
    tool_pb2,
)
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.tool_server import RefundTool
from tests.integration.test_server import _read_until


async def refund_agent(live: Live, url: str) -> str:
    tenant = await live.new_tenant("crash")
    parent = f"tenants/{tenant}"
    md = live.md()
    refund = tool_pb2.Tool(
        description="Refund an order", kind=tool_pb2.TOOL_KIND_HTTP, endpoint=url
    )
    refund.input_schema.update({"type": "object", "properties": {"amount_usd": {"type": "number"}}})
    refund.annotations.destructive_hint = True  # and not idempotent: never retried blindly
    await live.tools.CreateTool(
        tool_pb2.CreateToolRequest(parent=parent, tool_id="refund", tool=refund), metadata=md
    )
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


async def start_executor(
    live: Live, key: str, node: str, state: Path, run_store: str
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dataplane",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--control-plane",
        live.address,
        "--node-id",
        node,
        "--state-dir",
        str(state),
        "--run-store-url",
        run_store,
        "--lease-ttl",
        "1",
        "--allow-egress",
        "127.0.0.1",
        env={**os.environ, "PILOTHOUSE_EXECUTOR_KEY": key, "PILOTHOUSE_LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = await _read_until(proc.stderr, "listening on")
    return proc, seen.split("listening on ")[1].split()[0]


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
    tenant = await refund_agent(live, tool.url)
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
    a, address_a = await start_executor(live, executor_key, "exec-a", tmp_path / "a", run_store)
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
        a.send_signal(signal.SIGKILL)  # the effect happened; its result was never recorded
        await a.wait()

        b, address_b = await start_executor(live, executor_key, "exec-b", tmp_path / "b", run_store)
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
        model_calls = [e for e in events if e.WhichOneof("event") == "model_call_finished"]
        assert len(model_calls) == 2, "the first model call was not made again"
    finally:
        for proc in (a, b):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 20)
        await tool.aclose()
