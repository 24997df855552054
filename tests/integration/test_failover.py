"""Two control-plane replicas on one PostgreSQL database and a pool of three executors on
one PostgreSQL run store, every server its own process. Under load, one replica and one
executor are killed (SIGKILL): the executors that used the dead replica reconnect to the
other, the dead executor's runs are taken over by the pool, every run completes once,
and the control plane's accounting matches what the runs recorded to the last
picodollar."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from controlplane import launch
from controlplane.auth import keys
from pilothouse.v1 import (
    api_key_pb2,
    discovery_pb2,
    discovery_pb2_grpc,
    model_pb2,
    run_pb2,
    run_pb2_grpc,
    telemetry_pb2,
)
from tests import helpers as h
from tests.conftest import Live, fresh_pg_database
from tests.executors import Executor, start_executor
from tests.integration.test_agent_runs import start_request, support_agent
from tests.integration.test_telemetry import eventually, telemetry

RUNS_BEFORE, RUNS_AFTER = 45, 15


@pytest.fixture
async def control_db() -> AsyncIterator[str]:
    async for url in fresh_pg_database():
        yield url


@pytest.fixture
async def run_store() -> AsyncIterator[str]:
    async for url in fresh_pg_database():
        yield url


def slow_model() -> model_pb2.Model:
    """Two calls a run, a second each: runs are in flight when servers die."""
    model = h.model()
    first = model.scripted.rules.add(on_step=1)
    first.latency.FromMilliseconds(1000)
    first.tool_calls.add(tool="calc").arguments.update({"expression": "6 * 7"})
    second = model.scripted.rules.add(on_step=2, answer="The answer is {{last_tool_result}}")
    second.latency.FromMilliseconds(1000)
    return model


@pytest.mark.timeout(240)
async def test_killing_a_replica_and_an_executor_under_load_loses_nothing(
    control_db: str, run_store: str, tmp_path: Path
) -> None:
    admin = keys.generate().token
    a = await asyncio.to_thread(launch.start, control_db, bootstrap_key=admin)
    b = await asyncio.to_thread(launch.start, control_db, bootstrap_key=admin)
    live_a = Live(a, grpc.aio.insecure_channel(a.address), admin)  # type: ignore[arg-type]
    live_b = Live(b, grpc.aio.insecure_channel(b.address), admin)  # type: ignore[arg-type]
    children: list[Executor] = []
    channels: list[grpc.aio.Channel] = []
    try:
        tenant = await support_agent(live_a, model=slow_model())
        executor_key = await live_a.new_key(api_key_pb2.ROLE_EXECUTOR, None)
        client_key = await live_b.new_key(api_key_pb2.ROLE_CLIENT, tenant)
        md = (("authorization", f"Bearer {client_key}"),)
        # Two executors prefer replica A, one prefers B; each fails over to the other.
        targets = [f"ipv4:{a.address},{b.address}"] * 2 + [f"ipv4:{b.address},{a.address}"]
        stubs = []
        nodes = [f"pool-{n}-{os.urandom(2).hex()}" for n in range(len(targets))]
        for n, target in enumerate(targets):
            proc = await start_executor(
                target,
                executor_key,
                node=nodes[n],
                state_dir=tmp_path / f"executor-{n}",
                run_store_url=run_store,
                lease_ttl=2,
            )
            children.append(proc)
            channels.append(grpc.aio.insecure_channel(proc.address))
            stubs.append(run_pb2_grpc.AgentServiceStub(channels[-1]))

        async def admitted(stub: run_pb2_grpc.AgentServiceStub) -> str | None:
            try:
                started = await stub.StartRun(start_request(tenant), metadata=md)
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                    return None  # the executor has not got the configuration yet
                raise
            return started.run.name

        warm_up = [await eventually(lambda s=stub: admitted(s), timeout=60) for stub in stubs]

        async def start(n: int, on: list[int]) -> str:
            stub = stubs[on[n % len(on)]]
            request = start_request(tenant)
            request.idempotency_key = f"load-{n}"
            return (await stub.StartRun(request, metadata=md)).run.name

        before = [asyncio.create_task(start(n, [0, 1, 2])) for n in range(RUNS_BEFORE)]
        await asyncio.sleep(1.5)  # runs in flight on every executor
        a.process.send_signal(signal.SIGKILL)
        children[1].send_signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        names = list(await asyncio.gather(*before))
        # The survivors still take new runs, also the one whose replica died.
        names += await asyncio.gather(*(start(RUNS_BEFORE + n, [0, 2]) for n in range(RUNS_AFTER)))
        assert len(set(names)) == RUNS_BEFORE + RUNS_AFTER
        names += warm_up

        async def finished(name: str) -> run_pb2.Run | None:
            run = (await stubs[2].GetRun(run_pb2.GetRunRequest(name=name), metadata=md)).run
            return run if run.state == run_pb2.RUN_STATE_FINISHED else None

        runs = [await eventually(lambda n=name: finished(n), timeout=120) for name in names]
        assert {run.stop_reason for run in runs} == {run_pb2.STOP_REASON_COMPLETED}
        assert {run.final_answer for run in runs} == {'The answer is {"result": 42}'}
        assert any(run.attempts > 0 for run in runs), "the dead executor's runs moved on"

        # The survivors' configuration streams are open on B and hold what B serves;
        # executor 0's, which was on A, opened after the kill.
        async def reconnected() -> bool | None:
            listed = await discovery_pb2_grpc.ExecutorServiceStub(live_b.channel).ListExecutors(
                discovery_pb2.ListExecutorsRequest(page_size=100), metadata=live_b.md()
            )
            by_node = {e.node_id: e for e in listed.executors}
            moved, stayed = by_node.get(nodes[0]), by_node.get(nodes[2])
            ok = (
                moved is not None
                and stayed is not None
                and moved.connected_since.ToDatetime(UTC) > killed_at - timedelta(seconds=1)
                and all(
                    e.connected and e.acked_version == listed.current_version
                    for e in (moved, stayed)
                )
            )
            return True if ok else None

        await eventually(reconnected, timeout=30)

        # The surviving replica's index and ledger agree with the runs, exactly.
        async def indexed(name: str) -> telemetry_pb2.RunSummary | None:
            got = await telemetry(live_b).GetRunSummary(
                telemetry_pb2.GetRunSummaryRequest(name=name), metadata=live_b.md()
            )
            done = got.run.state == run_pb2.RUN_STATE_FINISHED
            return got.run if done and got.run.usage.model_calls >= 2 else None

        for run in runs:
            summary = await eventually(lambda n=run.name: indexed(n), timeout=90)
            assert summary.usage.cost_usd == run.usage.cost_usd, run.name
            # Two calls; and one more, billed at its worst case, for each call that was in
            # flight on the killed executor (written before it was made).
            assert summary.usage.model_calls == run.usage.model_calls >= 2
        usage = await telemetry(live_b).QueryUsage(
            telemetry_pb2.QueryUsageRequest(parent=f"tenants/{tenant}"), metadata=live_b.md()
        )
        [row] = usage.rows
        assert Decimal(row.cost_usd) == sum(Decimal(run.usage.cost_usd) for run in runs)
        assert row.model_calls == sum(run.usage.model_calls for run in runs)
        assert row.estimated_model_calls == row.model_calls - 2 * len(runs)
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.terminate()
        for proc in children:
            await proc.exited(30)
        for channel in (*channels, live_a.channel, live_b.channel):
            await channel.close()
        for plane in (a, b):
            await asyncio.to_thread(plane.stop)
        for pipe in (a.process.stderr, b.process.stderr):
            if pipe is not None:
                pipe.close()
