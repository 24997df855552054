"""Telemetry end to end: runs on a real executor reach the control plane's usage ledger
and run index through the outbox relay, exactly once, also across a control-plane outage;
ingestion is idempotent and keeps what it cannot take; usage queries validate and page."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2

from dataplane.runstore.database import open_run_database
from dataplane.runstore.outbox import Outbox
from pilothouse.v1 import api_key_pb2, run_pb2, telemetry_pb2, telemetry_pb2_grpc
from tests import helpers as h
from tests.conftest import Live, start_live
from tests.integration.test_agent_runs import run_to_end, stage, support_agent
from tests.integration.test_cli import cli

Code = grpc.StatusCode
T = TypeVar("T")


def telemetry(live: Live) -> telemetry_pb2_grpc.TelemetryServiceStub:
    return telemetry_pb2_grpc.TelemetryServiceStub(live.channel)


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0) -> T:
    """``check``'s first answer that is not None, polling."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            answer = await check()
        except grpc.aio.AioRpcError as e:
            if e.code() != Code.NOT_FOUND:
                raise
            answer = None
        if answer is not None:
            return answer
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.1)


def request(tenant: str, n: int = 0) -> run_pb2.RunAgentRequest:
    return run_pb2.RunAgentRequest(
        agent=f"tenants/{tenant}/agents/helper",
        input="what is six times seven?",
        variables={"customer": "Ada"},
        idempotency_key=f"k-{n}",
    )


async def finished_summary(live: Live, name: str) -> telemetry_pb2.RunSummary:
    async def check() -> telemetry_pb2.RunSummary | None:
        got = await telemetry(live).GetRunSummary(
            telemetry_pb2.GetRunSummaryRequest(name=name), metadata=live.md()
        )
        return got.run if got.run.state == run_pb2.RUN_STATE_FINISHED else None

    return await eventually(check)


async def usage(
    live: Live, parent: str, *dims: int, **fields: object
) -> telemetry_pb2.QueryUsageResponse:
    return await telemetry(live).QueryUsage(
        telemetry_pb2.QueryUsageRequest(parent=parent, group_by=list(dims), **fields),  # type: ignore[arg-type]
        metadata=live.md(),
    )


async def test_a_run_is_accounted_in_the_ledger_and_the_run_index(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        events = await run_to_end(s, key, request(tenant))
        name, stopped = events[0].run, events[-1].run_stopped
        summary = await finished_summary(live, name)
        assert summary.usage == stopped.usage, "the index sums the ledger: the run's own usage"
        assert Decimal(summary.usage.cost_usd) > 0
        assert (summary.steps, summary.stop_reason) == (2, run_pb2.STOP_REASON_COMPLETED)
        assert summary.executor == s.executor.settings.node_id
        assert summary.agent == f"tenants/{tenant}/agents/helper"
        assert summary.prompt_version == events[0].run_started.prompt_version
        assert summary.create_time.ToDatetime() <= summary.end_time.ToDatetime()

        by_model = await usage(
            live,
            f"tenants/{tenant}",
            telemetry_pb2.USAGE_DIMENSION_AGENT,
            telemetry_pb2.USAGE_DIMENSION_PROMPT_VERSION,
            telemetry_pb2.USAGE_DIMENSION_MODEL,
        )
        # Tool calls have no model: they are a row of their own.
        [row] = [r for r in by_model.rows if r.model]
        [tools] = [r for r in by_model.rows if not r.model]
        assert (tools.tool_calls, tools.model_calls, tools.cost_usd) == (1, 0, "0")
        assert (row.agent, row.model) == (summary.agent, f"tenants/{tenant}/models/small")
        assert row.prompt_version == summary.prompt_version
        assert (row.model_calls, row.input_tokens, row.output_tokens) == (
            2,
            stopped.usage.input_tokens,
            stopped.usage.output_tokens,
        )
        assert Decimal(row.cost_usd) == Decimal(stopped.usage.cost_usd)
        assert row.model_seconds > 0
        by_tool = await usage(live, f"tenants/{tenant}", telemetry_pb2.USAGE_DIMENSION_TOOL)
        assert {(r.tool, r.model_calls, r.tool_calls) for r in by_tool.rows} == {
            ("", 2, 0),
            ("calc", 0, 1),
        }
        listed = await telemetry(live).ListRunSummaries(
            telemetry_pb2.ListRunSummariesRequest(parent=f"tenants/{tenant}"), metadata=live.md()
        )
        assert [r.name for r in listed.runs] == [name]
        assert listed.freshness.reporting_executors >= 1
        assert listed.freshness.HasField("last_ingest_time")

        # Delivered events leave the outbox.
        db = open_run_database(run_database_url)
        try:

            async def drained() -> bool | None:
                return True if not await Outbox(db).peek(tenant=tenant) else None

            await eventually(drained)
        finally:
            await db.aclose()


async def test_telemetry_outlives_a_control_plane_outage_exactly_once(
    database_url: str, own_run_database_url: str, tmp_path: Path
) -> None:
    plane = await start_live(database_url)
    port = plane.plane.port
    tenant = await support_agent(plane)
    async with stage(plane, own_run_database_url, tmp_path, outbox_limit=12) as s:
        key = await s.client_key(tenant)
        await s.settled()
        first = await run_to_end(s, key, request(tenant, 0))
        await finished_summary(plane, first[0].run)

        await plane.channel.close()
        await plane.plane.aclose()
        # Executors keep running agents without the control plane; telemetry waits.
        names = [(await run_to_end(s, key, request(tenant, n)))[0].run for n in (1, 2)]
        relay = s.executor.relay

        async def full() -> bool | None:
            return True if relay.full() else None

        await eventually(full)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await run_to_end(s, key, request(tenant, 3))
        assert refused.value.code() == Code.RESOURCE_EXHAUSTED
        assert "outbox" in (refused.value.details() or "")
        assert h.rich_status(refused.value).details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)

        plane = await start_live(
            database_url, listen=f"127.0.0.1:{port}", bootstrap_key=plane.admin_key
        )
        try:
            for name in names:
                await finished_summary(plane, name)
            # Every model call counted once, though batches may have been sent twice.
            totals = await usage(plane, f"tenants/{tenant}")
            [row] = totals.rows
            assert (row.model_calls, row.tool_calls) == (6, 3)

            async def drained() -> bool | None:
                return None if relay.full() else True

            await eventually(drained)
            again = await run_to_end(s, key, request(tenant, 4))
            assert again[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        finally:
            await plane.channel.close()
            await plane.plane.aclose()


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def event(
    tenant: str, run: str, sequence: int, when: datetime, executor: str = "x-1", **kind: Any
) -> telemetry_pb2.TelemetryEvent:
    """The run's event number ``sequence``, as a relay sends it."""
    return telemetry_pb2.TelemetryEvent(
        id=f"{run}:{sequence}",
        run=f"tenants/{tenant}/runs/{run}",
        time=_ts(when),
        executor=executor,
        sequence=sequence,
        **kind,
    )


def model_event(
    tenant: str, run: str, sequence: int, cost: str, when: datetime
) -> telemetry_pb2.TelemetryEvent:
    return event(
        tenant,
        run,
        sequence,
        when,
        model_usage=telemetry_pb2.ModelUsage(
            agent=f"tenants/{tenant}/agents/a",
            step=1,
            model=f"tenants/{tenant}/models/m",
            provider="openai",
            input_tokens=100,
            output_tokens=10,
            cost_usd=cost,
            model_seconds=0.5,
        ),
    )


async def send(
    live: Live, key: str, *batches: telemetry_pb2.StreamEventsRequest
) -> list[telemetry_pb2.StreamEventsResponse]:
    call = telemetry(live).StreamEvents(metadata=live.md(key))
    answers = []
    for batch in batches:
        await call.write(batch)
        answers.append(await call.read())
    await call.done_writing()
    return answers  # type: ignore[return-value]


async def test_ingestion_is_idempotent_and_keeps_what_it_cannot_take(live: Live) -> None:
    tenant = await live.new_tenant()
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    run = str(uuid.uuid4())
    now = datetime.now(UTC)
    ended = event(
        tenant,
        run,
        4,
        now,
        executor="x-2",
        run_ended=telemetry_pb2.RunEnded(reason=run_pb2.STOP_REASON_COMPLETED, steps=1),
    )
    opened = event(
        tenant,
        run,
        1,
        now - timedelta(seconds=2),
        run_opened=telemetry_pb2.RunOpened(
            agent=f"tenants/{tenant}/agents/a", prompt_version="v", config_version="c"
        ),
    )
    queued = event(
        tenant,
        run,
        0,
        now - timedelta(seconds=3),
        run_queued=telemetry_pb2.RunQueued(agent=f"tenants/{tenant}/agents/a"),
    )
    queued.id = f"{run}:0"
    events = [
        ended,  # out of order: the run's last event first
        queued,
        model_event(tenant, run, 2, "0.000123456789", now - timedelta(seconds=1)),
        model_event(tenant, run, 3, "0.5", now - timedelta(seconds=1)),
        opened,
        model_event(tenant, run, 5, "0.0000000000001", now),  # finer than the ledger keeps
        telemetry_pb2.TelemetryEvent(id="bad-name", run="runs/x", time=_ts(now), sequence=1),
    ]
    batch = telemetry_pb2.StreamEventsRequest(executor="x-1", batch_sequence=1, events=events)
    again = telemetry_pb2.StreamEventsRequest(executor="x-1", batch_sequence=2, events=events)
    first, second = await send(live, key, batch, again)
    assert (first.acked_batch_sequence, first.duplicates) == (1, 0)
    assert {r.id: r.reason for r in first.rejected}.keys() == {f"{run}:5", "bad-name"}
    assert "12 decimal places" in {r.id: r.reason for r in first.rejected}[f"{run}:5"]
    assert (second.acked_batch_sequence, second.duplicates) == (2, 2)

    [row] = (await usage(live, f"tenants/{tenant}")).rows
    assert (row.model_calls, row.input_tokens) == (2, 200)
    assert row.cost_usd == "0.500123456789", "exact: the sum of the events, once"
    summary = await finished_summary(live, f"tenants/{tenant}/runs/{run}")
    assert (summary.agent, summary.prompt_version) == (f"tenants/{tenant}/agents/a", "v")
    assert summary.executor == "x-2", "the newest event names the executor"
    assert summary.create_time == queued.time, "created when it was queued"

    with pytest.raises(grpc.aio.AioRpcError) as nameless:
        await send(live, key, telemetry_pb2.StreamEventsRequest(batch_sequence=1))
    assert nameless.value.code() == Code.INVALID_ARGUMENT
    assert "executor" in h.field_violations(nameless.value)

    # An executor key confined to another tenant may not report this one's runs.
    other = await live.new_tenant()
    confined = await live.new_key(api_key_pb2.ROLE_EXECUTOR, other)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await send(live, confined, batch)
    assert denied.value.code() == Code.PERMISSION_DENIED


async def test_usage_queries_bucket_page_and_validate(live: Live) -> None:
    tenant = await live.new_tenant()
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    runs = [str(uuid.uuid4()) for _ in range(3)]
    events = [
        model_event(tenant, run, 1, "0.01", hour + timedelta(minutes=10 + 60 * i))
        for i, run in enumerate(runs)
    ]
    await send(
        live, key, telemetry_pb2.StreamEventsRequest(executor="x", batch_sequence=1, events=events)
    )
    parent = f"tenants/{tenant}"
    window = {"start_time": _ts(hour), "end_time": _ts(hour + timedelta(hours=3))}
    hourly = await usage(live, parent, bucket=duration_pb2.Duration(seconds=3600), **window)
    assert [(r.bucket_start.ToDatetime(UTC), r.cost_usd) for r in hourly.rows] == [
        (hour + timedelta(hours=i), "0.01") for i in range(3)
    ]
    first = await usage(live, parent, telemetry_pb2.USAGE_DIMENSION_RUN, page_size=2, **window)
    assert len(first.rows) == 2 and first.next_page_token
    rest = await usage(
        live,
        parent,
        telemetry_pb2.USAGE_DIMENSION_RUN,
        page_size=2,
        page_token=first.next_page_token,
        **window,
    )
    assert {r.run for r in [*first.rows, *rest.rows]} == {f"{parent}/runs/{r}" for r in runs}
    assert not rest.next_page_token
    # Every tenant of the session's shared database, on one page.
    everyone = await usage(
        live, "tenants/-", telemetry_pb2.USAGE_DIMENSION_TENANT, page_size=1000, **window
    )
    assert tenant in {r.tenant for r in everyone.rows}

    for fields, dims, field in [
        (
            {"page_token": first.next_page_token},
            [telemetry_pb2.USAGE_DIMENSION_MODEL],
            "page_token",
        ),
        ({"bucket": duration_pb2.Duration(seconds=30)}, [], "bucket"),
        ({}, [telemetry_pb2.USAGE_DIMENSION_UNSPECIFIED], "group_by[0]"),
        ({}, [telemetry_pb2.USAGE_DIMENSION_RUN] * 2, "group_by"),
        ({"start_time": _ts(hour), "end_time": _ts(hour)}, [], "start_time"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await usage(live, parent, *dims, **fields)
        assert bad.value.code() == Code.INVALID_ARGUMENT
        assert field in h.field_violations(bad.value), field
    with pytest.raises(grpc.aio.AioRpcError) as bad_parent:
        await usage(live, f"{parent}/agents/a")
    assert "parent" in h.field_violations(bad_parent.value)

    # Clients may not read usage; an operator confined to a tenant reads only that one.
    client = await live.new_key(api_key_pb2.ROLE_CLIENT, tenant)
    operator = await live.new_key(api_key_pb2.ROLE_OPERATOR, tenant)
    stub = telemetry(live)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.QueryUsage(
            telemetry_pb2.QueryUsageRequest(parent=parent), metadata=live.md(client)
        )
    assert denied.value.code() == Code.PERMISSION_DENIED
    mine = await stub.QueryUsage(
        telemetry_pb2.QueryUsageRequest(parent=parent), metadata=live.md(operator)
    )
    assert mine.rows[0].model_calls == 3
    with pytest.raises(grpc.aio.AioRpcError) as everywhere:
        await stub.QueryUsage(
            telemetry_pb2.QueryUsageRequest(parent="tenants/-"), metadata=live.md(operator)
        )
    assert everywhere.value.code() == Code.PERMISSION_DENIED


async def test_cli_reports_usage_and_runs_from_the_control_plane(live: Live) -> None:
    tenant = await live.new_tenant()
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    run = str(uuid.uuid4())
    now = datetime.now(UTC)
    ended = event(
        tenant,
        run,
        3,
        now,
        executor="x-9",
        run_ended=telemetry_pb2.RunEnded(reason=run_pb2.STOP_REASON_MAX_STEPS, steps=4),
    )
    events = [model_event(tenant, run, i, "0.25", now) for i in (1, 2)] + [ended]
    await send(
        live, key, telemetry_pb2.StreamEventsRequest(executor="x", batch_sequence=1, events=events)
    )

    table = await cli(live, "usage", "--tenant", tenant, "--by", "agent,model", "--since", "1h")
    assert table.code == 0, table.err
    header, row, freshness = table.out.strip().splitlines()
    assert header.split()[:4] == ["AGENT", "MODEL", "MODEL", "CALLS"]
    assert row.split()[:3] == ["a", "m", "2"] and "0.5" in row.split()
    assert freshness.startswith("As of telemetry ingested at")
    data = json.loads((await cli(live, "usage", "--tenant", tenant, "-o", "json")).out)
    assert data["rows"][0]["cost_usd"] == "0.5"

    listed = await cli(live, "runs", "list", "--tenant", tenant)
    assert listed.code == 0, listed.err
    lines = listed.out.strip().splitlines()
    assert lines[1].split()[:6] == [run, "a", "finished", "max_steps", "4", "0.5"]
    got = await cli(live, "runs", "get", run, "--tenant", tenant, "-o", "json")
    summary = json.loads(got.out)["run"]
    assert (summary["executor"], summary["usage"]["model_calls"]) == ("x-9", 2)

    bad = await cli(live, "usage", "--by", "colour")
    assert bad.code == 2 and "--by 'colour'" in bad.err
