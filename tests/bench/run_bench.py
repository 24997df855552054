"""Run benchmark: what the executor adds to each step of a run, and steps per second.

    make bench        # this with the registry benchmark; PILOTHOUSE_TEST_PG_DSN adds PostgreSQL

A control plane and an executor run as their own processes on 127.0.0.1; the model is
the fake OpenAI-compatible server (zero latency) in this process. A run has five steps:
four model replies that call the builtin calculator, then an answer. Per-step overhead
is (the run's time through RunAgent - the same five model calls made directly) / 5, the
durable checkpoints included. Then 10 runs at a time for a while: steps per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from controlplane import launch
from dataplane.http1 import Http1Transport
from pilothouse.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    api_key_pb2,
    api_key_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    prompt_pb2,
    prompt_pb2_grpc,
    run_pb2,
    run_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
)
from tests import helpers as h
from tests.bench.registry_bench import database_urls, write_result
from tests.executors import Executor, start_executor
from tests.fakes.openai_server import Behaviour, FakeOpenAI

STEPS = 5
RUNS = 200
CONCURRENT = 10
CONCURRENT_SECONDS = 10.0


def script(fake: FakeOpenAI, runs: int) -> None:
    for _ in range(runs):
        for i in range(STEPS - 1):
            fake.then(
                Behaviour(tool_calls=[{"name": "calc", "arguments": {"expression": f"{i} + 1"}}])
            )
        fake.then(Behaviour(content="done"))


async def setup(address: str, admin: str, fake: FakeOpenAI) -> str:
    md = (("authorization", f"Bearer {admin}"),)
    async with grpc.aio.insecure_channel(address) as ch:
        await tenant_pb2_grpc.TenantServiceStub(ch).CreateTenant(
            tenant_pb2.CreateTenantRequest(tenant_id="bench", tenant=tenant_pb2.Tenant()),
            metadata=md,
        )
        p = "tenants/bench"
        calc = tool_pb2.Tool(
            description="arithmetic", kind=tool_pb2.TOOL_KIND_BUILTIN, endpoint="calculator"
        )
        calc.input_schema.update(
            {"type": "object", "properties": {"expression": {"type": "string"}}}
        )
        calc.annotations.read_only_hint = True
        await tool_pb2_grpc.ToolServiceStub(ch).CreateTool(
            tool_pb2.CreateToolRequest(parent=p, tool_id="calc", tool=calc), metadata=md
        )
        models = model_pb2_grpc.ModelServiceStub(ch)
        await models.CreateModel(
            model_pb2.CreateModelRequest(
                parent=p,
                model_id="fake",
                model=h.openai_model(fake.base_url),
            ),
            metadata=md,
        )
        await models.CreateModelRoute(
            model_pb2.CreateModelRouteRequest(
                parent=p,
                model_route_id="r",
                model_route=model_pb2.ModelRoute(
                    targets=[model_pb2.ModelRouteTarget(model=f"{p}/models/fake", weight=1)]
                ),
            ),
            metadata=md,
        )
        prompts = prompt_pb2_grpc.PromptServiceStub(ch)
        await prompts.CreatePrompt(
            prompt_pb2.CreatePromptRequest(parent=p, prompt_id="q", prompt=prompt_pb2.Prompt()),
            metadata=md,
        )
        v = await prompts.CreatePromptVersion(
            prompt_pb2.CreatePromptVersionRequest(
                parent=f"{p}/prompts/q",
                prompt_version=prompt_pb2.PromptVersion(
                    template="Be quick.", model_route=f"{p}/modelRoutes/r"
                ),
            ),
            metadata=md,
        )
        await prompts.SetPromptLabel(
            prompt_pb2.SetPromptLabelRequest(
                name=f"{p}/prompts/q", label="production", version=v.prompt_version.name
            ),
            metadata=md,
        )
        await agent_pb2_grpc.AgentRegistryServiceStub(ch).CreateAgent(
            agent_pb2.CreateAgentRequest(
                parent=p,
                agent_id="a",
                agent=agent_pb2.Agent(prompt=f"{p}/prompts/q", tools=[f"{p}/tools/calc"]),
            ),
            metadata=md,
        )
        key = await api_key_pb2_grpc.ApiKeyServiceStub(ch).CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT, tenant=p)
            ),
            metadata=md,
        )
        executor_key = await api_key_pb2_grpc.ApiKeyServiceStub(ch).CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_EXECUTOR)
            ),
            metadata=md,
        )
    return f"{key.secret} {executor_key.secret}"


async def one_run(stub: run_pb2_grpc.AgentServiceStub, key: str) -> float:
    started = time.perf_counter()
    last = None
    async for response in stub.RunAgent(
        run_pb2.RunAgentRequest(agent="tenants/bench/agents/a", input="go"),
        metadata=(("authorization", f"Bearer {key}"),),
    ):
        last = response.event
    elapsed = time.perf_counter() - started
    assert last is not None and last.run_stopped.reason == run_pb2.STOP_REASON_COMPLETED, last
    return elapsed


async def direct_calls(fake: FakeOpenAI, http: Http1Transport) -> float:
    """The same five model calls, made directly over the executor's HTTP transport on a
    kept-alive connection, as the executor's are: what the run's steps cannot go below."""
    url = httpx.URL(fake.base_url + "/chat/completions")
    headers = [(b"content-type", b"application/json")]
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "tools": [
            {"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}
        ],
    }
    content = json.dumps(body).encode()
    started = time.perf_counter()
    for _ in range(STEPS):
        reply = await http.exchange("POST", url, headers, content, 5.0)
        async for _chunk in reply.body:
            pass
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class Stack:
    """What a run benchmark runs against: the fake model, a control plane and an
    executor, their own processes, and a client's key the executor holds."""

    fake: FakeOpenAI
    plane: launch.ChildControlPlane
    executor: Executor
    client_key: str


@contextlib.asynccontextmanager
async def stack(
    run_store_url: str,
    workdir: Path,
    first_run: Callable[[FakeOpenAI, str, str], Awaitable[object]],
    *,
    node: str = "bench",
    env: dict[str, str] | None = None,
    workers: int | None = None,
) -> AsyncIterator[Stack]:
    """Start the stack; ``first_run(fake, executor address, client key)`` is tried until
    it succeeds (the executor holds the client's key once its configuration is in)."""
    fake = await FakeOpenAI().start()
    admin = subprocess.run(
        [sys.executable, "-m", "controlplane", "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()
    plane = launch.start(
        f"sqlite:///{workdir / f'cp-{secrets.token_hex(3)}.db'}", bootstrap_key=admin
    )
    executor = None
    try:
        client_key, executor_key = (await setup(plane.address, admin, fake)).split()
        executor = await start_executor(
            plane.address,
            executor_key,
            node=node,
            state_dir=workdir,
            run_store_url=run_store_url,
            env=env,
            workers=workers,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                await first_run(fake, executor.address, client_key)
                break
            except grpc.aio.AioRpcError:
                fake.script.clear()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        yield Stack(fake, plane, executor, client_key)
    finally:
        if executor is not None:
            await executor.stop()
        plane.stop()
        await fake.aclose()


async def _first_five_step_run(fake: FakeOpenAI, address: str, key: str) -> None:
    script(fake, 1)
    async with grpc.aio.insecure_channel(address) as channel:
        await one_run(run_pb2_grpc.AgentServiceStub(channel), key)


async def measure(
    run_store_url: str, workdir: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``env``: more environment for the executor process."""
    async with stack(run_store_url, workdir, _first_five_step_run, env=env) as s:
        fake, executor, client_key = s.fake, s.executor, s.client_key
        async with grpc.aio.insecure_channel(executor.address) as channel:
            stub = run_pb2_grpc.AgentServiceStub(channel)
            script(fake, 10)
            for _ in range(10):  # warm up
                await one_run(stub, client_key)
            overheads = []
            http = Http1Transport()
            try:
                for _ in range(RUNS):
                    script(fake, 1)
                    base = await direct_calls(fake, http)
                    fake.script.clear()
                    script(fake, 1)
                    run = await one_run(stub, client_key)
                    overheads.append((run - base) / STEPS)
            finally:
                await http.aclose()
            script(fake, 100_000)
            done = 0
            stop_at = time.perf_counter() + CONCURRENT_SECONDS

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop_at:
                    await one_run(stub, client_key)
                    done += 1

            started, cpu_before = time.perf_counter(), cpu_seconds(executor.pid)
            await asyncio.gather(*(worker() for _ in range(CONCURRENT)))
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(executor.pid) - cpu_before
        ms = [o * 1000 for o in overheads]
        return {
            "per_step_overhead_ms": {
                "p50": round(statistics.median(ms), 3),
                "p99": round(pct(ms, 99), 3),
                "mean": round(statistics.fmean(ms), 3),
                "runs": RUNS,
            },
            "steps_per_second_at_10_concurrent": round(done * STEPS / elapsed, 1),
            "executor_cpu_ms_per_step_at_10_concurrent": round(cpu * 1000 / (done * STEPS), 3),
            "runs_completed_concurrently": done,
        }


async def main() -> None:
    results: dict[str, Any] = {"benchmark": "runs", "steps_per_run": STEPS, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with database_urls(work, "runs.db") as backends:
            for label, url in backends.items():
                result = await measure(url, work)
                results["backends"][label] = result
                o = result["per_step_overhead_ms"]
                rate = result["steps_per_second_at_10_concurrent"]
                cpu = result["executor_cpu_ms_per_step_at_10_concurrent"]
                print(
                    f"{label:<11} per-step overhead p50 {o['p50']:.2f} ms, p99 {o['p99']:.2f} ms | "
                    f"{rate:.0f} steps/s at 10 concurrent runs, {cpu:.2f} ms executor CPU a step",
                    flush=True,
                )
    write_result("runs", results)


if __name__ == "__main__":
    asyncio.run(main())
