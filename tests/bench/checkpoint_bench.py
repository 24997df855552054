"""Checkpoint benchmark: the latency of one run's checkpoints, one after another, as the
executor's run loop sees it (the write, its hand-offs and its commit), per backend; and
of a one-step run's two writes: its creation (with its opening checkpoint) and its end
(with the reply's checkpoint, its events and the audit record).

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
from dataplane.runstore.model import NewEvent, StepCheckpoint, StopReason, Telemetry
from dataplane.runstore.store import NewRun, RunStore
from storekit.loop import run as run_on_loop
from tests.bench.registry_bench import database_urls, write_result
from tests.bench.run_bench import pct

CHECKPOINTS = 2000
RUNS = 1500
"""One-step runs created and ended (the first 200 are a warm-up)."""


async def measure(url: str) -> dict[str, float]:
    db = open_run_database(url)
    await db.migrate()
    try:
        store = RunStore(db, lease_ttl=timedelta(seconds=60))
        run, lease, _ = await store.create(
            NewRun("bench", "tenants/bench/agents/a", {"input": "x"}, queued=False), owner="b"
        )
        assert lease is not None
        micros: list[float] = []
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
        created, ended = await one_step_runs(store)
        figures = _figures(micros)
        figures.update({f"create_{k}": v for k, v in _figures(created).items()})
        figures.update({f"end_{k}": v for k, v in _figures(ended).items()})
        return figures
    finally:
        await db.aclose()


def _figures(micros: list[float]) -> dict[str, float]:
    return {
        "p50_us": round(statistics.median(micros)),
        "p90_us": round(pct(micros, 90)),
        "p99_us": round(pct(micros, 99)),
    }


async def one_step_runs(store: RunStore) -> tuple[list[float], list[float]]:
    """A one-step run's writes, as the executor makes them: created leased with its
    opening checkpoint, ended with the reply's checkpoint. Microseconds of each."""
    opening = StepCheckpoint(
        0,
        {
            "messages": [
                {"role": "system", "content": "Be quick."},
                {"role": "user", "content": "go"},
            ]
        },
        {},
        [NewEvent("run_started", {"prompt_version": "v"}, Telemetry("run_opened", {"agent": "a"}))],
    )
    reply = StepCheckpoint(
        1,
        {"messages": [{"role": "assistant", "content": "done"}]},
        {"input_tokens": 5, "output_tokens": 1, "model_calls": 1},
        [
            NewEvent("step_started", {"step": 1}),
            NewEvent("model_call_finished", {"step": 1}, Telemetry("model_usage", {"step": 1})),
        ],
    )
    ending = [
        NewEvent("final_answer", {"text": "done"}),
        NewEvent("run_stopped", {"reason": "STOP_REASON_COMPLETED"}, Telemetry("run_ended", {})),
    ]
    created, ended = [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        _, lease, _ = await store.create(
            NewRun(
                "bench", "tenants/bench/agents/a", {"input": "go"}, queued=False, opening=opening
            ),
            owner="b",
        )
        created.append((time.perf_counter() - started) * 1e6)
        assert lease is not None
        started = time.perf_counter()
        await store.finish(
            lease, StopReason.COMPLETED, final_answer="done", events=ending, checkpoint=reply
        )
        ended.append((time.perf_counter() - started) * 1e6)
    return created[200:], ended[200:]


async def main() -> None:
    results: dict[str, Any] = {"benchmark": "checkpoint", "checkpoints": CHECKPOINTS}
    with tempfile.TemporaryDirectory() as tmp:
        async with database_urls(Path(tmp), "runs.db") as backends:
            for label, url in backends.items():
                figures = await measure(url)
                results[label] = figures
                for what, prefix in (
                    ("checkpoint", ""),
                    ("run created", "create_"),
                    ("run ended", "end_"),
                ):
                    print(
                        f"{label:<11} {what:<11} p50 {figures[prefix + 'p50_us']} µs, "
                        f"p90 {figures[prefix + 'p90_us']} µs, p99 {figures[prefix + 'p99_us']} µs",
                        flush=True,
                    )
    write_result("checkpoint", results)


if __name__ == "__main__":
    run_on_loop(main())
