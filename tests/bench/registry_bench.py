"""Registry benchmark: read latency of Get and List over 1,000 tools, and
`pilothouse apply` of 1,000 resources, on SQLite and (when a DSN is given) PostgreSQL.

    make bench                              # SQLite only
    PILOTHOUSE_TEST_PG_DSN=postgresql://postgres@127.0.0.1:5432/test make bench

The control plane runs in its own process on 127.0.0.1, as in production; the client is
the Python SDK (reads) and the CLI (apply). Prints a table and writes
tests/bench/results/registry.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from controlplane import launch
from pilothouse.client import Client, ClientConfig
from pilothouse.v1 import tool_pb2

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "bench" / "results"
TOOLS = 1000
GETS = 2000
LISTS = 50
TENANT = "bench"


def manifest(count: int) -> str:
    docs = [f"kind: Tenant\nmetadata: {{name: {TENANT}}}\n"]
    for i in range(count - 1):
        docs.append(
            f"kind: Tool\nmetadata: {{name: tool-{i:04d}, tenant: {TENANT}}}\n"
            "spec:\n"
            f"  description: Benchmark tool number {i}\n"
            "  kind: http\n"
            f"  endpoint: http://127.0.0.1:9/tools/{i}\n"
            "  inputSchema:\n"
            "    type: object\n"
            "    properties: {order_id: {type: string}, note: {type: string, maxLength: 200}}\n"
            "    required: [order_id]\n"
            "  timeout: 5s\n"
        )
    return "---\n".join(docs)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def apply(address: str, key: str, path: Path) -> tuple[float, str]:
    env = {**os.environ, "PILOTHOUSE_ADDR": address, "PILOTHOUSE_API_KEY": key}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pilothouse.cli", "apply", "-f", str(path)],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"apply failed: {result.stderr[-2000:]}")
    return elapsed, result.stdout


async def reads(address: str, key: str) -> dict[str, Any]:
    async with Client(ClientConfig(address=address, api_key=key)) as client:
        names = [f"tenants/{TENANT}/tools/tool-{i:04d}" for i in range(TOOLS - 1)]
        for name in names[:50]:  # warm up connections and caches
            await client.call(client.tools.GetTool, tool_pb2.GetToolRequest(name=name))
        gets = []
        for _ in range(GETS):
            request = tool_pb2.GetToolRequest(name=random.choice(names))
            started = time.perf_counter()
            await client.call(client.tools.GetTool, request)
            gets.append(time.perf_counter() - started)
        results: dict[str, Any] = {"get": summary(gets)}
        for size in (50, 1000):
            lists = []
            for _ in range(LISTS):
                request = tool_pb2.ListToolsRequest(parent=f"tenants/{TENANT}", page_size=size)
                started = time.perf_counter()
                response = await client.call(client.tools.ListTools, request)
                lists.append(time.perf_counter() - started)
            assert len(response.tools) == min(size, TOOLS - 1)
            results[f"list_page_{size}"] = summary(lists)
        return results


async def fresh_pg_database(dsn: str) -> tuple[str, str]:
    base = make_url(dsn)
    name = f"pilothouse_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(base.set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return base.set(database=name).render_as_string(False), name


def write_result(name: str, result: dict[str, Any]) -> None:
    """Keep a benchmark's result as ``tests/bench/results/{name}.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


async def drop_pg_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(make_url(dsn).set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database_urls(directory: Path, filename: str) -> AsyncIterator[dict[str, str]]:
    """Database URLs to measure, by backend: the SQLite file ``filename`` in ``directory``,
    and with PILOTHOUSE_TEST_PG_DSN a fresh PostgreSQL database, dropped afterwards."""
    urls = {"sqlite": f"sqlite:///{directory / filename}"}
    dsn = os.environ.get("PILOTHOUSE_TEST_PG_DSN")
    name = None
    if dsn:
        urls["postgresql"], name = await fresh_pg_database(dsn)
    try:
        yield urls
    finally:
        if dsn and name:
            await drop_pg_database(dsn, name)
    if not dsn:
        print("postgresql  skipped: set PILOTHOUSE_TEST_PG_DSN to include it")


def run_backend(label: str, database_url: str, workdir: Path) -> dict[str, Any]:
    key = subprocess.run(
        [sys.executable, "-m", "controlplane", "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = workdir / "bench.yaml"
    path.write_text(manifest(TOOLS))
    plane = launch.start(database_url, bootstrap_key=key)
    address = plane.address
    try:
        first, out = apply(address, key, path)
        assert out.count(" created") == TOOLS, out[-500:]
        second, out = apply(address, key, path)
        assert out.count(" unchanged") == TOOLS, out[-500:]
        result = {
            "apply_1000_created_s": round(first, 3),
            "apply_1000_unchanged_s": round(second, 3),
            **asyncio.run(reads(address, key)),
        }
    finally:
        plane.stop()

    def lat(key: str) -> str:
        return f"p50 {result[key]['p50_ms']:.2f} ms, p99 {result[key]['p99_ms']:.2f} ms"

    print(
        f"{label:<11} apply 1000: {result['apply_1000_created_s']:.2f} s created, "
        f"{result['apply_1000_unchanged_s']:.2f} s unchanged | Get {lat('get')} | "
        f"List(50) {lat('list_page_50')} | List(1000) {lat('list_page_1000')}",
        flush=True,
    )
    return result


async def main() -> None:
    results: dict[str, Any] = {
        "benchmark": "registry",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "tools": TOOLS - 1,
        "resources_applied": TOOLS,
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with database_urls(workdir, "cp.db") as backends:
            for label, url in backends.items():
                # It runs event loops of its own (for the SDK's reads).
                results["backends"][label] = await asyncio.to_thread(
                    run_backend, label, url, workdir
                )
    write_result("registry", results)


if __name__ == "__main__":
    asyncio.run(main())
