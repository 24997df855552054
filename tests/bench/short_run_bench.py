"""Short-run benchmark: the fixed cost of a run as users meet it.

    python -m tests.bench.short_run_bench           # make bench runs it too
    python -m tests.bench.short_run_bench workers   # only --workers 1 against 2
    # PILOTHOUSE_TEST_PG_DSN set: PostgreSQL as well as SQLite

A control plane and an executor run as their own processes on 127.0.0.1; the model is
the fake OpenAI-compatible server (zero latency) in this process. Two shapes: a one-step
run (one model call, no tools) and a three-step run (two replies that call the builtin
calculator, then an answer), each through ``RunAgent``:

* at C=1, one run after another: latency p50/p90/p99, against the same model calls made
  directly (over the executor's own HTTP transport, kept alive) in the same process;
* at C=10, ten runs at a time for a while: runs per second, against the direct calls at
  ten at a time, and CPU per run of the executor and (separately) of the control plane.

The direct calls are the floor: what is above them is what a run costs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx

from dataplane.http1 import Http1Transport
from pilothouse.v1 import run_pb2_grpc
from tests.bench.registry_bench import database_urls, write_result
from tests.bench.run_bench import cpu_seconds, one_run, pct, stack
from tests.fakes.openai_server import Behaviour, FakeOpenAI

SHAPES = {"one_step": 1, "three_step": 3}
"""Model calls a run of each shape makes."""
SEQUENTIAL_RUNS = 300
CONCURRENT = 10
CONCURRENT_SECONDS = 8.0


def policy(steps: int) -> Callable[[dict[str, Any]], Behaviour]:
    """Tool calls until the run has had ``steps - 1`` tool results, then an answer."""

    def reply(body: dict[str, Any]) -> Behaviour:
        results = sum(1 for m in body["messages"] if m["role"] == "tool")
        if results < steps - 1:
            return Behaviour(tool_calls=[{"name": "calc", "arguments": {"expression": "1 + 1"}}])
        return Behaviour(content="done")

    return reply


def direct(fake: FakeOpenAI, http: Http1Transport, steps: int) -> Callable[[], Awaitable[float]]:
    """The shape's model calls, made directly: the floor a run cannot go below."""
    url = httpx.URL(fake.base_url + "/chat/completions")
    headers = [(b"content-type", b"application/json")]
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]

    async def calls() -> float:
        started = time.perf_counter()
        messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
        for step in range(steps):
            body = {"model": "fake", "messages": messages, "stream": True, "tools": tools}
            reply = await http.exchange("POST", url, headers, json.dumps(body).encode(), 5.0)
            async for _chunk in reply.body:
                pass
            messages = [*messages, {"role": "tool", "content": str(step), "tool_call_id": "c"}]
        return time.perf_counter() - started

    return calls


def latency(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50": round(statistics.median(ms), 3),
        "p90": round(pct(ms, 90), 3),
        "p99": round(pct(ms, 99), 3),
    }


async def concurrently(work: Callable[[], Awaitable[float]]) -> tuple[int, float]:
    """Runs of ``work`` done by CONCURRENT workers in CONCURRENT_SECONDS, and the time."""
    done = 0
    stop_at = time.perf_counter() + CONCURRENT_SECONDS

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await work()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENT)))
    return done, time.perf_counter() - started


async def measure_shape(
    fake: FakeOpenAI,
    stub: run_pb2_grpc.AgentServiceStub,
    key: str,
    steps: int,
    pids: tuple[int, int],
) -> dict[str, Any]:
    fake.policy = policy(steps)
    http = Http1Transport()
    try:
        calls = direct(fake, http, steps)
        for _ in range(20):  # warm up both paths
            await one_run(stub, key)
            await calls()
        runs, floor = [], []
        for _ in range(SEQUENTIAL_RUNS):
            floor.append(await calls())
            runs.append(await one_run(stub, key))
        direct_done, direct_elapsed = await concurrently(calls)
        executor, plane = pids
        cpu_before = cpu_seconds(executor), cpu_seconds(plane)
        done, elapsed = await concurrently(lambda: one_run(stub, key))
        executor_cpu = cpu_seconds(executor) - cpu_before[0]
        plane_cpu = cpu_seconds(plane) - cpu_before[1]
    finally:
        await http.aclose()
    run_latency, floor_latency = latency(runs), latency(floor)
    return {
        "c1_run_ms": run_latency,
        "c1_direct_ms": floor_latency,
        "c1_overhead_p50_ms": round(run_latency["p50"] - floor_latency["p50"], 3),
        "c1_overhead_p99_ms": round(run_latency["p99"] - floor_latency["p99"], 3),
        "c10_runs_per_second": round(done / elapsed, 1),
        "c10_direct_per_second": round(direct_done / direct_elapsed, 1),
        "c10_executor_cpu_ms_per_run": round(executor_cpu * 1000 / done, 3),
        "c10_control_plane_cpu_ms_per_run": round(plane_cpu * 1000 / done, 3),
        "c10_runs": done,
    }


async def _first_run(fake: FakeOpenAI, address: str, key: str) -> None:
    fake.policy = policy(1)
    async with grpc.aio.insecure_channel(address) as channel:
        await one_run(run_pb2_grpc.AgentServiceStub(channel), key)


async def measure(run_store_url: str, workdir: Path) -> dict[str, Any]:
    node = f"short-{secrets.token_hex(2)}"
    async with (
        stack(run_store_url, workdir, _first_run, node=node) as s,
        grpc.aio.insecure_channel(s.executor.address) as channel,
    ):
        stub = run_pb2_grpc.AgentServiceStub(channel)
        pids = (s.executor.pid, s.plane.process.pid)
        return {
            shape: await measure_shape(s.fake, stub, s.client_key, steps, pids)
            for shape, steps in SHAPES.items()
        }


async def measure_workers(run_store_url: str, workdir: Path, workers: int) -> dict[str, Any]:
    """One-step runs at C=10 against ``dataplane serve --workers N``, each of the ten
    clients on a connection of its own (the kernel gives each connection to a worker):
    runs/s, and CPU a run of the executor's processes (each worker's share) and of the
    control plane, and the cores this process (the clients and the fake model) kept
    busy: where the machine's two cores went."""
    node = f"workers-{secrets.token_hex(2)}"
    async with stack(run_store_url, workdir, _first_run, node=node, workers=workers) as s:
        # Channels to one address share one connection unless told not to.
        own = [("grpc.use_local_subchannel_pool", 1)]
        channels = [
            grpc.aio.insecure_channel(s.executor.address, options=own) for _ in range(CONCURRENT)
        ]
        try:
            stubs = [run_pb2_grpc.AgentServiceStub(c) for c in channels]
            for stub in stubs:  # every worker configured, every connection warm
                await _until_served(stub, s.client_key)
                for _ in range(10):
                    await one_run(stub, s.client_key)
            tree = [s.executor.pid, *s.executor.workers()]
            before = [cpu_seconds(p) for p in tree], cpu_seconds(s.plane.process.pid)
            here, database = time.process_time(), postgres_seconds()
            done = 0
            stop_at = time.perf_counter() + CONCURRENT_SECONDS

            async def client(stub: run_pb2_grpc.AgentServiceStub) -> None:
                nonlocal done
                while time.perf_counter() < stop_at:
                    await one_run(stub, s.client_key)
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(client(stub) for stub in stubs))
            elapsed = time.perf_counter() - started
            spent = [cpu_seconds(p) - b for p, b in zip(tree, before[0], strict=True)]
            plane = cpu_seconds(s.plane.process.pid) - before[1]
            generator = time.process_time() - here
            database = postgres_seconds() - database
        finally:
            for c in channels:
                await c.close()
    by_worker = spent[1:] if len(tree) > 1 else spent
    return {
        "workers": workers,
        "c10_runs_per_second": round(done / elapsed, 1),
        "executor_cpu_ms_per_run": round(sum(spent) * 1000 / done, 3),
        "worker_cpu_share": [round(w / sum(by_worker), 3) for w in by_worker],
        "executor_cores_busy": round(sum(spent) / elapsed, 2),
        "control_plane_cpu_ms_per_run": round(plane * 1000 / done, 3),
        "control_plane_cores_busy": round(plane / elapsed, 2),
        "load_generator_cores_busy": round(generator / elapsed, 2),
        "postgresql_cores_busy": round(database / elapsed, 2),
        "runs": done,
    }


def postgres_seconds() -> float:
    """CPU seconds PostgreSQL's server processes on this machine have used so far (the
    run store's database, when it is PostgreSQL, shares the cores)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "(postgres)" in (entry / "stat").read_text():
                    total += cpu_seconds(int(entry.name))
            except OSError:  # it exited meanwhile
                continue
    return total


async def _until_served(stub: run_pb2_grpc.AgentServiceStub, key: str) -> None:
    """A worker serves a client's runs once its configuration is in."""
    deadline = time.monotonic() + 20
    while True:
        try:
            await one_run(stub, key)
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main(parts: list[str]) -> None:
    """``parts``: ``shapes``, ``workers`` or both (no arguments)."""
    parts = parts or ["shapes", "workers"]
    results: dict[str, Any] = {
        "benchmark": "short_runs",
        "sequential_runs": SEQUENTIAL_RUNS,
        "concurrent": CONCURRENT,
        "backends": {},
        "workers": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with database_urls(work, "runs.db") as backends:
            for label, url in backends.items() if "shapes" in parts else ():
                result = await measure(url, work)
                results["backends"][label] = result
                for shape, r in result.items():
                    run, floor = r["c1_run_ms"], r["c1_direct_ms"]
                    print(
                        f"{label:<11} {shape:<10} C=1 run p50 {run['p50']:.2f} / p90 "
                        f"{run['p90']:.2f} / p99 {run['p99']:.2f} ms (direct p50 "
                        f"{floor['p50']:.2f}, p99 {floor['p99']:.2f}) | C=10 "
                        f"{r['c10_runs_per_second']:.0f} runs/s (direct "
                        f"{r['c10_direct_per_second']:.0f}/s), CPU a run: executor "
                        f"{r['c10_executor_cpu_ms_per_run']:.2f} ms, control plane "
                        f"{r['c10_control_plane_cpu_ms_per_run']:.2f} ms",
                        flush=True,
                    )
            for label, url in backends.items() if "workers" in parts else ():
                for workers in (1, 2):
                    w = await measure_workers(url, work, workers)
                    results["workers"].setdefault(label, []).append(w)
                    print(
                        f"{label:<11} one_step   --workers {workers}: C=10 "
                        f"{w['c10_runs_per_second']:.0f} runs/s on {CONCURRENT} connections, "
                        f"executor CPU a run {w['executor_cpu_ms_per_run']:.2f} ms "
                        f"({w['executor_cores_busy']:.2f} cores busy; worker shares "
                        f"{w['worker_cpu_share']}), control plane "
                        f"{w['control_plane_cpu_ms_per_run']:.2f} ms "
                        f"({w['control_plane_cores_busy']:.2f} cores), load generator and "
                        f"fake model {w['load_generator_cores_busy']:.2f} cores, PostgreSQL "
                        f"server {w['postgresql_cores_busy']:.2f} cores",
                        flush=True,
                    )
    write_result("short_runs", results)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
