"""Telemetry cost benchmark: what tracing and metrics add to each step of a run.

    make bench

The run benchmark (tests/bench/run_bench.py: a control plane and an executor in their
own processes, five-step runs against the fake model provider, SQLite run store) twice
over: once with OpenTelemetry off (no OTEL_* variables: the API's no-op providers), once
exporting every span and metric by OTLP/gRPC to a fake collector on 127.0.0.1 (batched
spans, metrics every second). The outbox relay runs in both, as it always does. Off and
on alternate, twice each; the figures are the medians. The target: the per-step overhead
with telemetry on within +20 % of it off.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.registry_bench import write_result
from tests.bench.run_bench import measure
from tests.fakes.otlp_collector import FakeCollector

ROUNDS = 2


async def main() -> None:
    collector = await FakeCollector().start()
    on_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for i in range(ROUNDS):
                for label, env in (("off", {}), ("on", on_env)):
                    store = f"sqlite:///{work / f'runs-{label}-{i}.db'}"
                    results[label].append(await measure(store, work, env))
    finally:
        await collector.aclose()

    def median(label: str, pick: Any) -> float:
        return round(statistics.median(pick(r) for r in results[label]), 3)

    summary: dict[str, Any] = {"benchmark": "tracing", "rounds": ROUNDS}
    for label in ("off", "on"):
        summary[label] = {
            "per_step_overhead_p50_ms": median(label, lambda r: r["per_step_overhead_ms"]["p50"]),
            "per_step_overhead_mean_ms": median(label, lambda r: r["per_step_overhead_ms"]["mean"]),
            "executor_cpu_ms_per_step": median(
                label, lambda r: r["executor_cpu_ms_per_step_at_10_concurrent"]
            ),
            "steps_per_second_at_10_concurrent": median(
                label, lambda r: r["steps_per_second_at_10_concurrent"]
            ),
        }
    off, on = summary["off"], summary["on"]
    summary["overhead_increase_percent"] = round(
        (on["per_step_overhead_p50_ms"] / off["per_step_overhead_p50_ms"] - 1) * 100, 1
    )
    summary["cpu_increase_percent"] = round(
        (on["executor_cpu_ms_per_step"] / off["executor_cpu_ms_per_step"] - 1) * 100, 1
    )
    summary["spans_exported"] = collector.spans
    summary["span_kinds_exported"] = sorted(collector.span_names)
    summary["metric_exports"] = collector.metric_exports
    for label in ("off", "on"):
        r = summary[label]
        print(
            f"telemetry {label:<3} per-step overhead p50 {r['per_step_overhead_p50_ms']:.2f} ms "
            f"(mean {r['per_step_overhead_mean_ms']:.2f}) | executor CPU "
            f"{r['executor_cpu_ms_per_step']:.2f} ms a step | "
            f"{r['steps_per_second_at_10_concurrent']:.0f} steps/s at 10 concurrent",
            flush=True,
        )
    print(
        f"on vs off: overhead {summary['overhead_increase_percent']:+.1f} %, CPU "
        f"{summary['cpu_increase_percent']:+.1f} %; {collector.spans} spans "
        f"({', '.join(summary['span_kinds_exported'])}) and {collector.metric_exports} metric "
        "exports reached the collector",
        flush=True,
    )
    write_result("tracing", summary)


if __name__ == "__main__":
    asyncio.run(main())
