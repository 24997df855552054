"""Quota race benchmark: 1,000 runs at once over 4 executor processes against a USD budget
that covers about half of them.

    make bench        # with the others; PILOTHOUSE_TEST_PG_DSN adds a PostgreSQL control plane

A control plane and four executors run as their own processes on 127.0.0.1; the model is
the fake OpenAI-compatible server in this process, whose answers run to the call's
max_tokens, so that a call costs close to its worst case. One run is one model call. The
tenant's usd_per_day is 500 runs' cost. All 1,000 runs start together, 250 on each
executor; each ends completed, stopped by the tenant's quota, or refused at admission.
Then the executors stop (giving their leases back) and the control plane's balance is
read. Overshoot is what the runs spent past the budget (the target is zero); used is
what they spent as a share of it (the target is at least 95 %).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from controlplane import launch
from pilothouse.v1 import (
    quota_pb2,
    quota_pb2_grpc,
    run_pb2,
    run_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)
from tests.bench.registry_bench import database_urls, write_result
from tests.bench.run_bench import setup
from tests.executors import Executor, start_executor
from tests.fakes.openai_server import Behaviour, FakeOpenAI

RUNS = 1000
EXECUTORS = 4
COVERED = 500
"""Runs the budget pays for."""


async def run_once(stub: run_pb2_grpc.AgentServiceStub, key: str) -> tuple[str, Decimal]:
    """How the run ended ("refused" at admission) and what it cost."""
    last = None
    try:
        async for response in stub.RunAgent(
            run_pb2.RunAgentRequest(agent="tenants/bench/agents/a", input="go"),
            metadata=(("authorization", f"Bearer {key}"),),
        ):
            last = response.event
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return "refused", Decimal(0)
    assert last is not None
    stopped = last.run_stopped
    return run_pb2.StopReason.Name(stopped.reason), Decimal(stopped.usage.cost_usd)


async def measure(database_url: str, workdir: Path) -> dict[str, Any]:
    fake = await FakeOpenAI().start()
    fake.policy = lambda _body: Behaviour(content="word " * 200)  # cut at max_tokens
    admin = subprocess.run(
        [sys.executable, "-m", "controlplane", "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()
    plane = launch.start(database_url, bootstrap_key=admin)
    md = (("authorization", f"Bearer {admin}"),)
    executors: list[Executor] = []
    try:
        client_key, executor_key = (await setup(plane.address, admin, fake)).split()
        # One executor without a quota prices a run.
        first = await start_executor(
            plane.address,
            executor_key,
            node="price",
            state_dir=workdir / "price",
            run_store_url=_store(workdir, "p"),
        )
        executors.append(first)
        async with grpc.aio.insecure_channel(first.address) as channel:
            cost = await _first_run_cost(run_pb2_grpc.AgentServiceStub(channel), client_key)
        first.stop_now(timeout=30)
        budget = cost * COVERED
        async with grpc.aio.insecure_channel(plane.address) as ch:
            await tenant_pb2_grpc.TenantServiceStub(ch).UpdateQuotaPolicy(
                tenant_pb2.UpdateQuotaPolicyRequest(
                    quota_policy=tenant_pb2.QuotaPolicy(
                        name="tenants/bench/quotaPolicy", usd_per_day=str(budget)
                    )
                ),
                metadata=md,
            )
        addresses = []
        for i in range(EXECUTORS):
            process = await start_executor(
                plane.address,
                executor_key,
                node=f"quota-{i}",
                state_dir=workdir / f"e{i}",
                run_store_url=_store(workdir, str(i)),
            )
            executors.append(process)
            addresses.append(process.address)
        channels = [grpc.aio.insecure_channel(a) for a in addresses]
        try:
            stubs = [run_pb2_grpc.AgentServiceStub(c) for c in channels]
            await asyncio.gather(*(_configured(s, client_key) for s in stubs))
            started = time.perf_counter()
            outcomes = await asyncio.gather(
                *(run_once(stubs[n % EXECUTORS], client_key) for n in range(RUNS))
            )
            elapsed = time.perf_counter() - started
        finally:
            for c in channels:
                await c.close()
        for process in executors[1:]:
            process.terminate()
        for process in executors[1:]:
            process.stop_now(timeout=60)
        async with grpc.aio.insecure_channel(plane.address) as ch:
            balance = await quota_pb2_grpc.QuotaServiceStub(ch).GetBalance(
                quota_pb2.GetBalanceRequest(tenant="tenants/bench"), metadata=md
            )
        [day] = [b for b in balance.balances if b.limit == "usd_per_day"]
        spent = sum((c for _, c in outcomes), Decimal(0))
        counts: dict[str, int] = {}
        for reason, _ in outcomes:
            counts[reason] = counts.get(reason, 0) + 1
        return {
            "runs": RUNS,
            "executors": EXECUTORS,
            "run_cost_usd": str(cost),
            "budget_usd": str(budget),
            "spent_usd": str(spent),
            "reported_spent_usd": day.spent,
            "held_after_usd": day.held,
            "overshoot_usd": str(max(spent - budget, Decimal(0))),
            "used_percent": round(float(spent / budget * 100), 2),
            "outcomes": counts,
            "seconds": round(elapsed, 2),
        }
    finally:
        for process in executors:
            if process.poll() is None:
                process.kill()
                process.wait()
        plane.stop()
        await fake.aclose()


def _store(workdir: Path, name: str) -> str:
    return f"sqlite:///{workdir / f'runs-{name}-{secrets.token_hex(3)}.db'}"


async def _configured(stub: run_pb2_grpc.AgentServiceStub, key: str) -> None:
    """Until the executor knows the client's key (an unknown run is then NOT_FOUND)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await stub.GetRun(
                run_pb2.GetRunRequest(
                    name="tenants/bench/runs/00000000-0000-0000-0000-000000000000"
                ),
                metadata=(("authorization", f"Bearer {key}"),),
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def _first_run_cost(stub: run_pb2_grpc.AgentServiceStub, key: str) -> Decimal:
    await _configured(stub, key)
    reason, cost = await run_once(stub, key)
    assert reason == "STOP_REASON_COMPLETED", reason
    return cost


async def main() -> None:
    results: dict[str, Any] = {"benchmark": "quota_race", "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with database_urls(work, "cp.db") as backends:
            for label, url in backends.items():
                result = await measure(url, work)
                results["backends"][label] = result
                print(
                    f"{label:<11} {RUNS} runs on {EXECUTORS} executors in {result['seconds']} s: "
                    f"budget {result['budget_usd']} USD, spent {result['spent_usd']} "
                    f"(reported {result['reported_spent_usd']}), overshoot "
                    f"{result['overshoot_usd']}, used {result['used_percent']} % | "
                    f"{result['outcomes']}",
                    flush=True,
                )
    write_result("quota", results)


if __name__ == "__main__":
    asyncio.run(main())
