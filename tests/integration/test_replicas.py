"""Two control-plane replicas on one PostgreSQL database: a change made through one
reaches executors of the other at once (LISTEN/NOTIFY), not only at the periodic
reconcile, and after the notification connection is lost the reconcile still delivers;
quota leases granted through both never pass a budget; each background loop runs on one
of them at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from controlplane.store.schema import loop_leases
from pilothouse.v1 import tool_pb2
from tests import helpers as h
from tests.conftest import Live, fresh_pg_database, start_live
from tests.integration.test_agent_runs import stage
from tests.integration.test_quota import race_for_a_budget


@pytest.fixture
async def shared_pg() -> AsyncIterator[str]:
    async for url in fresh_pg_database():
        yield url


async def test_a_change_through_one_replica_reaches_the_others_executors_at_once(
    shared_pg: str, tmp_path: Path
) -> None:
    # Reconciles an hour apart: only the notification can carry the change in time.
    a = await start_live(shared_pg, reconcile_interval=3600)
    b = await start_live(shared_pg, reconcile_interval=3600, bootstrap_key=a.admin_key)
    try:
        assert b.plane.listener is not None
        await asyncio.wait_for(b.plane.listener.connected.wait(), 10)
        tenant = await a.new_tenant("rep")
        async with stage(b, f"sqlite:///{tmp_path / 'runs.db'}", tmp_path) as s:
            await s.settled()
            before = s.executor.watcher.current
            assert before is not None
            await create_tool(a, tenant, "echo")
            name = f"tenants/{tenant}/tools/echo"
            await s.executor.watcher.wait_for(lambda c: c.get(tool_pb2.Tool, name) is not None, 5)

            # A lost connection: the listener reconnects and catches up by itself.
            listener = b.plane.listener
            listener.connected.clear()
            await drop_listener_connections(shared_pg)
            await asyncio.wait_for(listener.connected.wait(), 15)
            await create_tool(a, tenant, "echo-2")
            await s.executor.watcher.wait_for(
                lambda c: c.get(tool_pb2.Tool, f"tenants/{tenant}/tools/echo-2") is not None, 5
            )
    finally:
        for live in (b, a):
            await live.channel.close()
            await live.plane.aclose()


async def test_leases_granted_through_two_replicas_never_pass_a_budget(shared_pg: str) -> None:
    a = await start_live(shared_pg)
    b = await start_live(shared_pg, bootstrap_key=a.admin_key)
    try:
        await race_for_a_budget([a, b])
        # Each loop's lease is one row: one replica at a time runs it.
        async with a.plane.db.snapshot() as conn:
            loops = set((await conn.execute(sa.select(loop_leases.c.name))).scalars())
        assert loops >= {"rollout-analysis", "quota-lease-expiry"}
    finally:
        for live in (b, a):
            await live.channel.close()
            await live.plane.aclose()


async def create_tool(live: Live, tenant: str, tool_id: str) -> None:
    await live.tools.CreateTool(
        tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id=tool_id, tool=h.tool()),
        metadata=live.md(),
    )


async def drop_listener_connections(url: str) -> None:
    """Terminate every backend of the database that LISTENs (the replicas' listeners)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
            parsed.database,
        )
    finally:
        await conn.close()
