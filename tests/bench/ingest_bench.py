"""Telemetry ingestion benchmark: events per second the control plane takes in from 4
concurrent executor streams (TelemetryService.StreamEvents), into SQLite and (when a DSN
is given) PostgreSQL; then the same events again, which must add no row.

    python -m tests.bench.ingest_bench
    PILOTHOUSE_TEST_PG_DSN=postgresql://postgres@127.0.0.1:5432/test \
        python -m tests.bench.ingest_bench

The control plane runs in its own process on 127.0.0.1. The streams send what relays
send: batches of 500 events, up to 4 batches unacknowledged per stream; each run
contributes its opening, two model calls, one tool call and its end (5 events). The
batches are built before the clock starts. Prints a table and writes
tests/bench/results/ingest.json.
"""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from controlplane import launch
from pilothouse.v1 import (
    api_key_pb2,
    api_key_pb2_grpc,
    run_pb2,
    telemetry_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)
from pilothouse.v1 import telemetry_pb2 as pb
from tests.bench.registry_bench import database_urls, write_result

STREAMS = 4
RUNS_PER_STREAM = 12_000
BATCH = 500
WINDOW = 4
TENANTS = 8


def run_events(tenant: str, executor: str, start: datetime) -> list[pb.TelemetryEvent]:
    run = str(uuid.uuid4())
    name = f"tenants/{tenant}/runs/{run}"
    agent = f"tenants/{tenant}/agents/support"
    version = f"tenants/{tenant}/prompts/support/versions/v1"
    events = []

    def event(sequence: int, **kind: Any) -> pb.TelemetryEvent:
        message = pb.TelemetryEvent(
            id=f"{run}:{sequence}", run=name, executor=executor, sequence=sequence, **kind
        )
        message.time.FromDatetime(start + timedelta(milliseconds=sequence))
        return message

    events.append(event(1, run_opened=pb.RunOpened(agent=agent, prompt_version=version)))
    for sequence, step in ((3, 1), (7, 2)):
        events.append(
            event(
                sequence,
                model_usage=pb.ModelUsage(
                    agent=agent,
                    step=step,
                    model=f"tenants/{tenant}/models/small",
                    provider="openai",
                    prompt_version=version,
                    input_tokens=812,
                    output_tokens=64,
                    cost_usd="0.0001602",
                    model_seconds=0.41,
                ),
            )
        )
    events.append(
        event(
            5,
            tool_usage=pb.ToolUsage(
                agent=agent,
                step=1,
                tool="lookup_order",
                call_id="c1",
                prompt_version=version,
                ok=True,
                executed=True,
                tool_seconds=0.02,
            ),
        )
    )
    events.append(event(9, run_ended=pb.RunEnded(reason=run_pb2.STOP_REASON_COMPLETED, steps=2)))
    return events


def stream_batches(index: int, start: datetime) -> list[pb.StreamEventsRequest]:
    executor = f"bench-exec-{index}"
    events = [
        e
        for r in range(RUNS_PER_STREAM)
        for e in run_events(f"bench-{r % TENANTS}", executor, start)
    ]
    return [
        pb.StreamEventsRequest(
            executor=executor, batch_sequence=n + 1, events=events[i : i + BATCH]
        )
        for n, i in enumerate(range(0, len(events), BATCH))
    ]


async def send_stream(
    stub: telemetry_pb2_grpc.TelemetryServiceStub,
    key: str,
    batches: list[pb.StreamEventsRequest],
) -> int:
    """Send the batches with up to WINDOW unacknowledged; the duplicates reported."""
    call = stub.StreamEvents(metadata=(("authorization", f"Bearer {key}"),))
    room = asyncio.Semaphore(WINDOW)
    duplicates = 0

    async def send() -> None:
        for batch in batches:
            await room.acquire()
            await call.write(batch)
        await call.done_writing()

    sender = asyncio.create_task(send())
    for expected in range(1, len(batches) + 1):
        answer = await call.read()
        assert isinstance(answer, pb.StreamEventsResponse)
        assert answer.acked_batch_sequence == expected and not answer.rejected
        duplicates += answer.duplicates
        room.release()
    await sender
    return duplicates


async def measure(address: str, admin_key: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        admin = (("authorization", f"Bearer {admin_key}"),)
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        for t in range(TENANTS):
            await tenants.CreateTenant(
                tenant_pb2.CreateTenantRequest(tenant_id=f"bench-{t}", tenant=tenant_pb2.Tenant()),
                metadata=admin,
            )
        key = (
            await api_key_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
                api_key_pb2.CreateApiKeyRequest(
                    api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_EXECUTOR)
                ),
                metadata=admin,
            )
        ).secret
        start = datetime.now(UTC) - timedelta(minutes=5)
        streams = [stream_batches(i, start) for i in range(STREAMS)]
        total = sum(len(b.events) for s in streams for b in s)
        usage_events = total * 3 // 5
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)

        began = time.perf_counter()
        first = await asyncio.gather(*(send_stream(stub, key, s) for s in streams))
        ingest_s = time.perf_counter() - began
        began = time.perf_counter()
        again = await asyncio.gather(*(send_stream(stub, key, s) for s in streams))
        replay_s = time.perf_counter() - began

        totals = await stub.QueryUsage(
            pb.QueryUsageRequest(parent="tenants/-", start_time=_ts(start - timedelta(hours=1))),
            metadata=admin,
        )
        [row] = totals.rows
        model_calls = STREAMS * RUNS_PER_STREAM * 2
        assert sum(first) == 0, "nothing was a duplicate the first time"
        assert sum(again) == usage_events, "the replay was all duplicates"
        assert (row.model_calls, row.tool_calls) == (model_calls, model_calls // 2), row
    return {
        "events": total,
        "usage_events": usage_events,
        "streams": STREAMS,
        "batch": BATCH,
        "ingest_s": round(ingest_s, 3),
        "events_per_s": round(total / ingest_s, 1),
        "replay_s": round(replay_s, 3),
        "replay_events_per_s": round(total / replay_s, 1),
        "replay_rows_added": row.model_calls + row.tool_calls - usage_events,
        "ledger_cost_usd": row.cost_usd,
    }


def _ts(when: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def main() -> None:
    results: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        async with database_urls(Path(tmp), "ingest.db") as urls:
            for label, url in urls.items():
                key = subprocess.run(
                    [sys.executable, "-m", "controlplane", "keygen"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                plane = launch.start(url, bootstrap_key=key)
                try:
                    result = await measure(plane.address, key)
                finally:
                    plane.stop()
                results[label] = result
                print(
                    f"{label:<11} {result['events']:,} events from {STREAMS} streams: "
                    f"{result['events_per_s']:,.0f} events/s; the same again: "
                    f"{result['replay_events_per_s']:,.0f} events/s, "
                    f"{result['replay_rows_added']} rows added"
                )
    write_result("ingest", results)


if __name__ == "__main__":
    asyncio.run(main())
