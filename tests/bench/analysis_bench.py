"""Rollout analysis benchmark: one analysis of a rollout whose current step holds
1,000,000 usage rows, on SQLite and (when a DSN is given) PostgreSQL.

    python -m tests.bench.analysis_bench
    PILOTHOUSE_TEST_PG_DSN=postgresql://postgres@127.0.0.1:5432/test \
        python -m tests.bench.analysis_bench

The control plane's database is filled directly (before the clock starts) with what the
telemetry stream would have left in it: 250,000 runs of one tenant that ended during the
step, half on the baseline and half on the candidate version, each with four usage rows
(three model calls and a tool call), and feedback on one run in ten; besides, another
tenant's 50,000 runs and 200,000 usage rows, and the tenant's runs from before the step,
which the analysis must pass over. The measured part is ``Rollouts.analyse``: the read
of the step's runs with their cost and feedback, the metrics, the checks, and the
analysis kept. Three analyses; the figures are the median and the slowest. Prints a
table and writes tests/bench/results/analysis.json.
"""

from __future__ import annotations

import asyncio
import platform
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from controlplane.registry import resources as r
from controlplane.registry.service import Registry
from controlplane.rollouts import analysis
from controlplane.rollouts.service import Rollouts
from controlplane.store.database import Database, open_database
from controlplane.store.schema import feedback, run_index, usage_events
from tests.bench.registry_bench import database_urls, write_result

TENANT = "acme"
OTHER_TENANT = "globex"
STEP_RUNS = 250_000
USAGE_PER_RUN = 4
OTHER_RUNS = 50_000
EARLIER_RUNS = 25_000
FEEDBACK_SHARE = 0.1
ANALYSES = 3
CHUNK = 20_000

PROMPT = f"tenants/{TENANT}/prompts/support"
BASELINE = f"{PROMPT}/versions/v1"
CANDIDATE = f"{PROMPT}/versions/v2"
M = r.RolloutMetric


def rollout(step_start: datetime) -> r.Record[r.Rollout]:
    spec = r.Rollout(
        prompt=PROMPT,
        baseline_version=BASELINE,
        candidate_version=CANDIDATE,
        stickiness=r.Stickiness.SESSION,
        steps=(r.RolloutStep(500), r.RolloutStep(2500), r.RolloutStep(5000)),
        analysis=r.RolloutAnalysis(
            interval=timedelta(seconds=10),
            min_sample_size=100,
            failure_limit=2,
            checks=(
                r.RolloutCheck(M.ERROR_RATE, threshold=0.05),
                r.RolloutCheck(M.LATENCY_P95, threshold=30.0),
                r.RolloutCheck(M.COST_PER_RUN, baseline_ratio=1.2),
                r.RolloutCheck(M.GUARDRAIL_VIOLATION_RATE, threshold=0.01),
                r.RolloutCheck(M.FEEDBACK_SCORE, threshold=0.4),
            ),
        ),
        state=r.RolloutState.PROGRESSING,
        step_index=2,
        weight_bps=5000,
        step_start_time=step_start,
    )
    return r.Record(TENANT, "support-v2", spec, "1", step_start, step_start)


def runs_of(
    tenant: str, count: int, start: datetime, span: timedelta, rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``count`` ended runs of ``tenant`` spread over ``span`` from ``start``, with their
    usage rows and feedback."""
    runs: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    for i in range(count):
        run_id = str(uuid.UUID(int=rng.getrandbits(128)))
        candidate = i % 2 == 1
        seconds = rng.uniform(0.5, 12.0)
        end = start + span * (i / count)
        runs.append(
            {
                "tenant": tenant,
                "run_id": run_id,
                "agent": f"tenants/{tenant}/agents/support",
                "state": "completed" if rng.random() > 0.02 else "failed",
                "stop_reason": "completed" if rng.random() > 0.02 else "failed",
                "stop_detail": "",
                "steps": USAGE_PER_RUN,
                "prompt_version": CANDIDATE if candidate else BASELINE,
                "variant": analysis.CANDIDATE if candidate else analysis.BASELINE,
                "trace_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "executor": f"executor-{i % 4}",
                "create_time": end - timedelta(seconds=seconds),
                "end_time": end,
                "last_event_time": end,
                "last_sequence": USAGE_PER_RUN + 2,
            }
        )
        for step in range(USAGE_PER_RUN):
            tool = step == USAGE_PER_RUN - 1
            usage.append(
                {
                    "id": f"{run_id}:{step + 2}",
                    "tenant": tenant,
                    "time_us": int(end.timestamp() * 1e6) - (USAGE_PER_RUN - step) * 1000,
                    "kind": "tool" if tool else "model",
                    "run_id": run_id,
                    "step": step,
                    "agent": f"tenants/{tenant}/agents/support",
                    "model": "" if tool else f"tenants/{tenant}/models/gpt",
                    "provider": "" if tool else "openai",
                    "tool": f"tenants/{tenant}/tools/search" if tool else "",
                    "prompt_version": CANDIDATE if candidate else BASELINE,
                    "variant": analysis.CANDIDATE if candidate else analysis.BASELINE,
                    "executor": f"executor-{i % 4}",
                    "input_tokens": 0 if tool else rng.randint(200, 2000),
                    "output_tokens": 0 if tool else rng.randint(20, 400),
                    "cached_input_tokens": 0,
                    "cost_pico": 0 if tool else rng.randint(10**8, 10**10),
                    "queue_seconds": 0.001,
                    "model_seconds": 0.0 if tool else seconds / 4,
                    "tool_seconds": seconds / 4 if tool else 0.0,
                    "approval_wait_seconds": 0.0,
                }
            )
        if rng.random() < FEEDBACK_SHARE:
            scores.append(
                {
                    "tenant": tenant,
                    "id": f"fb-{run_id}",
                    "run_id": run_id,
                    "score": rng.random(),
                    "comment": "",
                    "actor": "operator",
                    "create_time": end,
                }
            )
    return runs, usage, scores


async def load(db: Database, step_start: datetime) -> int:
    """Fill the ledger; returns how many usage rows the analysed step holds."""
    rng = random.Random(7)
    now = step_start + timedelta(hours=1)
    batches = [
        runs_of(TENANT, STEP_RUNS, step_start, now - step_start, rng),
        runs_of(TENANT, EARLIER_RUNS, step_start - timedelta(hours=2), timedelta(hours=2), rng),
        runs_of(OTHER_TENANT, OTHER_RUNS, step_start, now - step_start, rng),
    ]
    for table, index in ((run_index, 0), (usage_events, 1), (feedback, 2)):
        rows = [row for batch in batches for row in batch[index]]
        for at in range(0, len(rows), CHUNK):
            async with db.transaction() as conn:
                await conn.execute(table.insert(), rows[at : at + CHUNK])
    if db.dialect == "postgresql":
        async with db.single_statement() as conn:
            await conn.execute(sa.text("ANALYZE"))  # what autovacuum does after a load
    return len(batches[0][1])


async def measure(url: str) -> dict[str, Any]:
    db = open_database(url)
    await db.migrate()
    step_start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    loading = time.perf_counter()
    step_usage = await load(db, step_start)
    loaded = time.perf_counter() - loading
    rollouts = Rollouts(db, Registry(db), replica="bench")
    record = rollout(step_start)
    seconds: list[float] = []
    result = None
    for i in range(ANALYSES):
        began = time.perf_counter()
        result = await rollouts.analyse(record, step_start + timedelta(hours=1, seconds=i))
        seconds.append(time.perf_counter() - began)
    await db.aclose()
    assert result is not None
    runs = {v.variant: v.runs for v in result.variants}
    assert sum(runs.values()) == STEP_RUNS, runs
    assert result.verdict is analysis.Verdict.PASSED, result.checks
    return {
        "step_usage_rows": step_usage,
        "step_runs": runs,
        "verdict": result.verdict.value,
        "checks": {c.metric.value: c.verdict.value for c in result.checks},
        "load_seconds": round(loaded, 1),
        "analysis_seconds_median": round(statistics.median(seconds), 3),
        "analysis_seconds_max": round(max(seconds), 3),
    }


async def main() -> None:
    results: dict[str, Any] = {
        "benchmark": "rollout_analysis",
        "machine": platform.platform(),
        "target_seconds": 10,
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        async with database_urls(Path(tmp), "cp.db") as backends:
            for label, url in backends.items():
                result = await measure(url)
                results["backends"][label] = result
                print(
                    f"{label:<11} {result['step_usage_rows']:,} usage rows, "
                    f"{sum(result['step_runs'].values()):,} runs in the step: analysis "
                    f"median {result['analysis_seconds_median']} s, "
                    f"slowest {result['analysis_seconds_max']} s "
                    f"(verdict {result['verdict']}; loaded in {result['load_seconds']} s)",
                    flush=True,
                )
    write_result("analysis", results)


if __name__ == "__main__":
    asyncio.run(main())
