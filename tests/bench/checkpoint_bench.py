"""Checkpoint benchmark: the latency of one run's checkpoints, one after another, as the
executor's run loop sees it (the write, its hand-offs and its commit), per backend.

    .venv/bin/python -m tests.bench.checkpoint_bench   # PILOTHOUSE_TEST_PG_DSN adds PostgreSQL
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from dataplane.runstore.database import open_run_database
from dataplane.runstore.model import NewEvent
from dataplane.runstore.store import NewRun, RunStore
from storekit.loop import run as run_on_loop
from tests.bench.registry_bench import database_urls, write_result
from tests.bench.run_bench import pct

CHECKPOINTS = 2000


async def measure(url: str) -> dict[str, float]:
    db = open_run_database(url)
    await db.migrate()
    try:
        store = RunStore(db, lease_ttl=timedelta(seconds=60))
        run, lease, _ = await store.create(
            NewRun("bench", "tenants/bench/agents/a", {"input": "x"}, queued=False), owner="b"
        )
        assert lease is not None
        micros = []
        for step in range(CHECKPOINTS):
            started = time.perf_counter()
            lease = await store.checkpoint(
                lease,
                step=step,
                delta={"messages": [{"role": "assistant", "content": "a reply " * 10}]},
                usage={"input_tokens": step, "output_tokens": step},
                events=[
                    NewEvent("step_started", {"step": step}),
                    NewEvent("model_call_finished", {"step": step, "input_tokens": 5}),
                ],
            )
            micros.append((time.perf_counter() - started) * 1e6)
        return {
            "p50_us": round(statistics.median(micros)),
            "p90_us": round(pct(micros, 90)),
            "p99_us": round(pct(micros, 99)),
        }
    finally:
        await db.aclose()


async def main() -> None:
    results: dict[str, Any] = {"benchmark": "checkpoint", "checkpoints": CHECKPOINTS}
    with tempfile.TemporaryDirectory() as tmp:
        async with database_urls(Path(tmp), "runs.db") as backends:
            for label, url in backends.items():
                figures = await measure(url)
                results[label] = figures
                print(
                    f"{label:<11} checkpoint p50 {figures['p50_us']} µs, "
                    f"p90 {figures['p90_us']} µs, p99 {figures['p99_us']} µs",
                    flush=True,
                )
    write_result("checkpoint", results)


if __name__ == "__main__":
    run_on_loop(main())
