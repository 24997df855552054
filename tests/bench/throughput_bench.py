"""Throughput benchmark: one executor process, 1,000 runs at a time against the fake
OpenAI-compatible server answering after 200 ms, for a fixed time. Reports steps per
second against the ideal (concurrency / latency) and the executor's peak RSS.

    .venv/bin/python -m tests.bench.throughput_bench     # SQLite run store
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from controlplane import launch
from pilothouse.v1 import run_pb2, run_pb2_grpc
from tests.bench.registry_bench import write_result
from tests.bench.run_bench import STEPS, cpu_seconds, setup
from tests.executors import start_executor
from tests.fakes.openai_server import Behaviour, FakeOpenAI

CONCURRENT = 1000
LATENCY = 0.2
SECONDS = 30.0


def five_steps(body: dict[str, Any]) -> Behaviour:
    """Tool calls until the run has had STEPS - 1 tool results, then an answer."""
    results = sum(1 for m in body["messages"] if m["role"] == "tool")
    if results < STEPS - 1:
        return Behaviour(tool_calls=[{"name": "calc", "arguments": {"expression": "1 + 1"}}])
    return Behaviour(content="done")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main() -> None:
    fake = await FakeOpenAI(default_delay=LATENCY).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        admin = subprocess.run(
            [sys.executable, "-m", "controlplane", "keygen"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        plane = launch.start(f"sqlite:///{work / 'cp.db'}", bootstrap_key=admin)
        executor = None
        try:
            client_key, executor_key = (await setup(plane.address, admin, fake)).split()
            executor = await start_executor(
                plane.address,
                executor_key,
                node="throughput",
                state_dir=work,
                run_store_url=f"sqlite:///{work / 'runs.db'}",
                log_level="ERROR",
            )
            address = executor.address
            fake.policy = five_steps
            md = (("authorization", f"Bearer {client_key}"),)
            request = run_pb2.RunAgentRequest(agent="tenants/bench/agents/a", input="go")
            async with grpc.aio.insecure_channel(address) as channel:
                stub = run_pb2_grpc.AgentServiceStub(channel)
                deadline = time.monotonic() + 20
                while True:  # until the executor holds the client's key
                    try:
                        [r async for r in stub.RunAgent(request, metadata=md)]
                        break
                    except grpc.aio.AioRpcError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
                steps = 0

                async def worker() -> None:
                    nonlocal steps
                    while True:
                        async for response in stub.RunAgent(request, metadata=md):
                            if response.event.WhichOneof("event") == "step_started":
                                steps += 1

                started = time.perf_counter()
                cpu_before = cpu_seconds(executor.pid), time.process_time()
                workers = [asyncio.create_task(worker()) for _ in range(CONCURRENT)]
                await asyncio.sleep(SECONDS)
                counted, elapsed = steps, time.perf_counter() - started
                executor_cpu = cpu_seconds(executor.pid) - cpu_before[0]
                load_cpu = time.process_time() - cpu_before[1]
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                steps = counted
            result: dict[str, Any] = {
                "benchmark": "throughput",
                "concurrent_runs": CONCURRENT,
                "model_latency_s": LATENCY,
                "steps_per_run": STEPS,
                "steps_per_second": round(steps / elapsed, 1),
                "ideal_steps_per_second": CONCURRENT / LATENCY,
                "share_of_ideal": round(steps / elapsed / (CONCURRENT / LATENCY), 4),
                "executor_peak_rss_mb": round(rss_mb(executor.pid), 1),
                "executor_cpu_ms_per_step": round(executor_cpu * 1000 / steps, 3),
                "load_generator_cpu_ms_per_step": round(load_cpu * 1000 / steps, 3),
            }
        finally:
            if executor is not None:
                executor.stop_now(timeout=60)
            plane.stop()
            await fake.aclose()
    print(
        f"{CONCURRENT} concurrent runs, model latency {LATENCY * 1000:.0f} ms: "
        f"{result['steps_per_second']} steps/s = {result['share_of_ideal']:.1%} of the ideal "
        f"{result['ideal_steps_per_second']:.0f}; "
        f"executor peak RSS {result['executor_peak_rss_mb']} MB; CPU a step: executor "
        f"{result['executor_cpu_ms_per_step']} ms, load generator (fake model and clients, "
        f"this process) {result['load_generator_cpu_ms_per_step']} ms"
    )
    write_result("throughput", result)


if __name__ == "__main__":
    asyncio.run(main())
