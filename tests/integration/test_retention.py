"""Retention: on the control plane, usage rows, run index entries and audit records older
than configured go, on one replica at a time, and audit chains stay verifiable (by the
control plane and by the CLI) from the last record removed; expired quota leases that no
longer count are swept; executors prune finished runs from the run store."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import sqlalchemy as sa

from controlplane.config import add_arguments, from_arguments
from controlplane.retention import LEASE, Retention, RetentionPolicy
from controlplane.store.schema import audit_events, loop_leases, quota_leases
from dataplane.runstore.schema import checkpoints, run_events, runs, tool_calls
from pilothouse.v1 import api_key_pb2, run_pb2, telemetry_pb2, tool_pb2
from tests import helpers as h
from tests.conftest import Live, start_live
from tests.integration.test_agent_runs import run_to_end, stage, support_agent
from tests.integration.test_audit import records, verify
from tests.integration.test_cli import cli
from tests.integration.test_telemetry import (
    _ts,
    event,
    eventually,
    model_event,
    request,
    send,
    telemetry,
)

Code = grpc.StatusCode
T = TypeVar("T")


def ended_run(tenant: str, when: datetime) -> list[telemetry_pb2.TelemetryEvent]:
    """A run that opened, made one model call and ended at ``when``."""
    run = str(uuid.uuid4())
    return [
        event(
            tenant,
            run,
            1,
            when - timedelta(seconds=2),
            run_opened=telemetry_pb2.RunOpened(
                agent=f"tenants/{tenant}/agents/a", prompt_version="v", config_version="c"
            ),
        ),
        model_event(tenant, run, 2, "0.25", when - timedelta(seconds=1)),
        event(
            tenant,
            run,
            3,
            when,
            run_ended=telemetry_pb2.RunEnded(reason=run_pb2.STOP_REASON_COMPLETED, steps=1),
        ),
    ]


async def cost(live: Live, tenant: str) -> str:
    response = await telemetry(live).QueryUsage(
        telemetry_pb2.QueryUsageRequest(
            parent=f"tenants/{tenant}",
            start_time=_ts(datetime.now(UTC) - timedelta(days=30)),
        ),
        metadata=live.md(),
    )
    return ",".join(row.cost_usd for row in response.rows)


async def indexed(live: Live, tenant: str) -> set[str]:
    response = await telemetry(live).ListRunSummaries(
        telemetry_pb2.ListRunSummariesRequest(parent=f"tenants/{tenant}"), metadata=live.md()
    )
    return {run.name for run in response.runs}


async def until(check: Callable[[], Awaitable[T]], expected: T, timeout: float = 20.0) -> None:
    async def matches() -> bool | None:
        return True if await check() == expected else None

    await eventually(matches, timeout)


async def test_two_replicas_prune_usage_and_runs_past_their_retention(
    own_database_url: str,
) -> None:
    settings = {"retain_usage_days": 2.0, "retain_runs_days": 1.0, "retention_interval": 0.2}
    a = await start_live(own_database_url, **settings)
    b = await start_live(own_database_url, bootstrap_key=a.admin_key, **settings)
    try:
        tenant = await a.new_tenant()
        key = await a.new_key(api_key_pb2.ROLE_EXECUTOR, None)
        now = datetime.now(UTC)
        old, recent, fresh = (
            ended_run(tenant, now - timedelta(days=3)),
            ended_run(tenant, now - timedelta(hours=30)),
            ended_run(tenant, now),
        )
        await send(
            b,
            key,
            telemetry_pb2.StreamEventsRequest(
                executor="x-1", batch_sequence=1, events=[*old, *recent, *fresh]
            ),
        )
        # Usage older than two days goes; runs that ended over a day ago leave the index.
        await until(lambda: cost(a, tenant), "0.5")
        fresh_run = f"tenants/{tenant}/runs/{fresh[0].id.split(':')[0]}"
        await until(lambda: indexed(a, tenant), {fresh_run})
        # The pruning ran under the retention lease (one row: one holder at a time).
        async with a.plane.db.snapshot() as conn:
            holders = (
                await conn.execute(
                    sa.select(loop_leases.c.holder).where(loop_leases.c.name == LEASE)
                )
            ).scalars()
            assert len(list(holders)) == 1
        # A replica that stops hands the work on: old usage sent again is pruned anyway.
        await a.plane.aclose()
        again = ended_run(tenant, now - timedelta(days=5))
        await send(
            b,
            key,
            telemetry_pb2.StreamEventsRequest(executor="x-1", batch_sequence=2, events=again),
        )
        await until(lambda: cost(b, tenant), "0.5", timeout=30)
    finally:
        for live in (a, b):
            await live.channel.close()
        await b.plane.aclose()


async def test_pruned_audit_chains_still_verify_and_tampering_still_shows(
    own_database_url: str, tmp_path: Path
) -> None:
    live = await start_live(own_database_url)
    try:
        tenant = await live.new_tenant()
        parent = f"tenants/{tenant}"
        # Reading the log is on record once an hour per method: read it first, so that
        # the reads below add nothing.
        await verify(live, parent)
        await records(live, parent)
        for i in range(5):
            await live.tools.CreateTool(
                tool_pb2.CreateToolRequest(parent=parent, tool_id=f"t{i}", tool=h.tool()),
                metadata=live.md(),
            )
        before = await records(live, parent)
        recorded = before[1]  # a head an operator wrote down earlier
        # Everything so far is older than a day, a day from now.
        retention = Retention(live.plane.db, RetentionPolicy(audit=timedelta(days=1)), batch=2)
        pruned = await retention.prune(datetime.now(UTC) + timedelta(days=2))
        assert pruned.audit >= len(before)
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=parent, tool_id="later", tool=h.tool()),
            metadata=live.md(),
        )

        kept = await records(live, parent)
        assert kept[0].sequence > before[-1].sequence
        assert {r.action for r in kept} >= {"AuditLog.pruned", "Tool.create"}
        verdict = await verify(live, parent)
        assert verdict.intact, verdict.problem
        assert verdict.verified == len(kept)
        assert verdict.pruned_through_sequence == kept[0].sequence - 1
        assert verdict.pruned_through_hash == kept[0].prev_hash
        assert verdict.head_sequence == kept[-1].sequence

        # The CLI checks the kept records itself, from the last one removed.
        checked = await cli(live, "audit", "verify", "--tenant", tenant)
        assert checked.code == 0, checked.err
        assert "removed by retention" in checked.out
        # A head recorded before the pruning can no longer be checked, and says so.
        stale = await cli(
            live,
            "audit",
            "verify",
            "--tenant",
            tenant,
            "--expect-head",
            f"{recorded.sequence}:{recorded.hash}",
        )
        assert stale.code == 1 and "removed by retention" in stale.out, stale.out

        # Removing the first kept record, or changing one, is still found.
        async with live.plane.db.transaction() as conn:
            await conn.execute(
                audit_events.update()
                .where(audit_events.c.chain == tenant, audit_events.c.seq == kept[-1].sequence)
                .values(details='{"forged": true}')
            )
        tampered = await verify(live, parent)
        assert not tampered.intact and tampered.broken_sequence == kept[-1].sequence
        async with live.plane.db.transaction() as conn:
            await conn.execute(
                audit_events.delete().where(
                    audit_events.c.chain == tenant, audit_events.c.seq == kept[0].sequence
                )
            )
        cut = await verify(live, parent)
        assert not cut.intact and cut.broken_sequence == kept[0].sequence
        assert "missing" in cut.problem
    finally:
        await live.channel.close()
        await live.plane.aclose()


async def test_expired_leases_that_no_longer_count_are_swept(own_database_url: str) -> None:
    live = await start_live(own_database_url, quota_lease_ttl=0.4, quota_refresh=0.1)
    try:
        tenant = await live.new_tenant()
        now = datetime.now(UTC)
        async with live.plane.db.transaction() as conn:
            for id_, usd in (("no-usd", 0), ("holds-usd", 10**9)):
                await conn.execute(
                    quota_leases.insert().values(
                        id=id_,
                        tenant=tenant,
                        executor="gone",
                        day=now.strftime("%Y-%m-%d"),
                        month=now.strftime("%Y-%m"),
                        usd_nano=usd,
                        tokens_per_minute=0,
                        requests_per_minute=10,
                        run_slots=1,
                        wants_usd_nano=0,
                        wants_tokens_per_minute=0,
                        wants_requests_per_minute=10,
                        wants_run_slots=1,
                        waiting_usd_nano=0,
                        waiting_since=None,
                        expire_time=now - timedelta(seconds=1),
                        update_time=now - timedelta(seconds=31),
                    )
                )

        async def left() -> set[str] | None:
            async with live.plane.db.snapshot() as conn:
                ids = set(
                    (
                        await conn.execute(
                            sa.select(quota_leases.c.id).where(quota_leases.c.tenant == tenant)
                        )
                    ).scalars()
                )
            return ids if ids == {"holds-usd"} else None

        # The lease without USD goes; the one whose USD its executor may have spent stays
        # counted until its month ends.
        assert await eventually(left) == {"holds-usd"}
    finally:
        await live.channel.close()
        await live.plane.aclose()


@pytest.mark.parametrize("days", ["0", "-1", "soon"])
def test_retention_flags_are_checked(days: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit) as refused:
        from_arguments(parser.parse_args([]), env={"PILOTHOUSE_RETAIN_AUDIT_DAYS": days})
    assert "days" in str(refused.value)


async def test_executors_prune_finished_runs_past_their_retention(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    async with stage(
        live, own_run_database_url, tmp_path, retain_runs_days=1.0, retention_interval=0.2
    ) as s:
        key = await s.client_key(tenant)
        md = (("authorization", f"Bearer {key}"),)
        await s.settled()
        old, kept = [(await run_to_end(s, key, request(tenant, n)))[0].run for n in range(2)]
        old_id = old.rsplit("/", 1)[1]
        async with s.executor.db.transaction() as conn:
            await conn.execute(
                runs.update()
                .where(runs.c.id == old_id)
                .values(ended_at=datetime.now(UTC) - timedelta(days=2))
            )

        async def gone() -> bool | None:
            try:
                await s.agents.GetRun(run_pb2.GetRunRequest(name=old), metadata=md)
            except grpc.aio.AioRpcError as e:
                return True if e.code() == Code.NOT_FOUND else None
            return None

        await eventually(gone)
        got = await s.agents.GetRun(run_pb2.GetRunRequest(name=kept), metadata=md)
        assert got.run.state == run_pb2.RUN_STATE_FINISHED
        async with s.executor.db.snapshot() as conn:
            for table in (checkpoints, tool_calls, run_events):
                left = await conn.execute(
                    sa.select(sa.func.count()).where(table.c.run_id == old_id)
                )
                assert left.scalar_one() == 0, table.name
