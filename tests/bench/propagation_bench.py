"""Propagation benchmark: publish (a prompt label moves) → every watching ADS stream holds
the tenant's new configuration (Delta xDS) and ACKs it. 100 and 1,000 streams, from 4
client processes, on a control plane of its own on 127.0.0.1 (SQLite); with
PILOTHOUSE_TEST_PG_DSN also 1,000 streams split between two control-plane replicas on
one fresh PostgreSQL database, the label moved through one of them. Prints p50/p99 and
writes tests/bench/results/propagation.json."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy.engine import make_url

from controlplane import launch
from pilothouse.v1 import (
    api_key_pb2,
    api_key_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    prompt_pb2,
    prompt_pb2_grpc,
)
from tests.bench.registry_bench import (
    ROOT,
    apply,
    drop_pg_database,
    fresh_pg_database,
    manifest,
    write_result,
)

PROCESSES = 4
ROUNDS = 5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def measure(
    streams: int, database_url: str, workdir: Path, replicas: int = 1
) -> dict[str, Any]:
    """``streams`` split evenly between ``replicas`` control planes on ``database_url``;
    every change made through the first."""
    admin = subprocess.run(
        [sys.executable, "-m", "controlplane", "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()
    planes = [launch.start(database_url, bootstrap_key=admin) for _ in range(replicas)]
    plane = planes[0]
    clients: list[subprocess.Popen[str]] = []
    try:
        path = workdir / "m.yaml"
        path.write_text(manifest(20))
        apply(plane.address, admin, path)
        md = (("authorization", f"Bearer {admin}"),)
        async with grpc.aio.insecure_channel(plane.address) as ch:
            key = (
                await api_key_pb2_grpc.ApiKeyServiceStub(ch).CreateApiKey(
                    api_key_pb2.CreateApiKeyRequest(
                        api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_EXECUTOR)
                    ),
                    metadata=md,
                )
            ).secret
            models = model_pb2_grpc.ModelServiceStub(ch)
            await models.CreateModel(
                model_pb2.CreateModelRequest(
                    parent="tenants/bench",
                    model_id="m",
                    model=model_pb2.Model(
                        provider=model_pb2.MODEL_PROVIDER_SCRIPTED,
                        context_window=1000,
                        max_output_tokens=100,
                    ),
                ),
                metadata=md,
            )
            await models.CreateModelRoute(
                model_pb2.CreateModelRouteRequest(
                    parent="tenants/bench",
                    model_route_id="r",
                    model_route=model_pb2.ModelRoute(
                        targets=[
                            model_pb2.ModelRouteTarget(model="tenants/bench/models/m", weight=1)
                        ]
                    ),
                ),
                metadata=md,
            )
            prompts = prompt_pb2_grpc.PromptServiceStub(ch)
            await prompts.CreatePrompt(
                prompt_pb2.CreatePromptRequest(
                    parent="tenants/bench", prompt_id="p", prompt=prompt_pb2.Prompt()
                ),
                metadata=md,
            )
            versions = []
            for i in range(ROUNDS + 1):
                v = await prompts.CreatePromptVersion(
                    prompt_pb2.CreatePromptVersionRequest(
                        parent="tenants/bench/prompts/p",
                        prompt_version=prompt_pb2.PromptVersion(
                            template=f"version {i}", model_route="tenants/bench/modelRoutes/r"
                        ),
                    ),
                    metadata=md,
                )
                versions.append(v.prompt_version.name)
        per = streams // PROCESSES
        for p in range(PROCESSES):
            clients.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.bench.ads_streams",
                        planes[p % replicas].address,
                        key,
                        f"p{p}",
                        str(per),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    cwd=ROOT,
                )
            )
        seen: dict[str, dict[str, float]] = {}
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def reader(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                loop.call_soon_threadsafe(queue.put_nowait, json.loads(line))

        for proc in clients:
            loop.run_in_executor(None, reader, proc)

        async def wait_all(version: str | None, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while True:
                nodes = {n for n, vs in seen.items() if version is None or version in vs}
                if len(nodes) >= per * PROCESSES:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(nodes)} of {per * PROCESSES} streams got {version}")
                item = await asyncio.wait_for(queue.get(), remaining)
                seen.setdefault(item["node"], {})[item["version"]] = item["at"]

        await wait_all(None, 120)  # every stream holds the initial snapshot
        latencies: list[float] = []
        by_replica: dict[int, list[float]] = {r: [] for r in range(replicas)}
        async with grpc.aio.insecure_channel(plane.address) as ch:
            prompts = prompt_pb2_grpc.PromptServiceStub(ch)
            for i in range(ROUNDS):
                await asyncio.sleep(0.5)
                started = time.time()
                await prompts.SetPromptLabel(
                    prompt_pb2.SetPromptLabelRequest(
                        name="tenants/bench/prompts/p", label="production", version=versions[i + 1]
                    ),
                    metadata=md,
                )
                # The version the streams will see next is whatever the control plane serves.
                before = {n: set(vs) for n, vs in seen.items()}
                deadline = time.monotonic() + 60
                while True:
                    fresh = {n: set(vs) - before.get(n, set()) for n, vs in seen.items()}
                    if sum(1 for f in fresh.values() if f) >= per * PROCESSES:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("propagation did not finish")
                    item = await asyncio.wait_for(
                        queue.get(), max(0.1, deadline - time.monotonic())
                    )
                    seen.setdefault(item["node"], {})[item["version"]] = item["at"]
                for node, fresh_versions in fresh.items():
                    took = min(seen[node][v] for v in fresh_versions) - started
                    latencies.append(took)
                    # Nodes are named p{process}-{n}; process p watches replica p % replicas.
                    by_replica[int(node[1:].split("-")[0]) % replicas].append(took * 1000)
        ms = [x * 1000 for x in latencies]
        return {
            "backend": make_url(database_url).get_backend_name(),
            "replicas": replicas,
            "streams": per * PROCESSES,
            "rounds": ROUNDS,
            "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(pct(ms, 99), 1),
            "max_ms": round(max(ms), 1),
            "p99_ms_by_replica": [round(pct(v, 99), 1) for v in by_replica.values()],
        }
    finally:
        for proc in clients:
            proc.terminate()
            proc.wait(timeout=30)
        for each in planes:
            each.stop()


async def main() -> None:
    results: dict[str, Any] = {"benchmark": "propagation", "processes": PROCESSES, "runs": []}

    def report(result: dict[str, Any]) -> None:
        results["runs"].append(result)
        print(
            f"{result['streams']:>5} streams on {result['replicas']} {result['backend']} "
            f"control plane(s): publish → held and ACKed p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms (by replica: {result['p99_ms_by_replica']})",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        for streams in (100, 1000):
            report(await measure(streams, f"sqlite:///{Path(tmp) / f'cp-{streams}.db'}", Path(tmp)))
        dsn = os.environ.get("PILOTHOUSE_TEST_PG_DSN")
        if dsn:
            url, name = await fresh_pg_database(dsn)
            try:
                report(await measure(1000, url, Path(tmp), replicas=2))
            finally:
                await drop_pg_database(dsn, name)
        else:
            print("two replicas on postgresql skipped: set PILOTHOUSE_TEST_PG_DSN to include it")
    write_result("propagation", results)


if __name__ == "__main__":
    asyncio.run(main())
