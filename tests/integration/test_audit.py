"""The audit log: every decision in its tenant's hash chain (the control plane's own,
executors' through telemetry, refusals), listed and verified over gRPC and by the CLI,
and tampering found."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import grpc
import sqlalchemy as sa

from controlplane.store.schema import audit_events
from pilothouse import auditchain
from pilothouse.cli.audit import record_of
from pilothouse.v1 import (
    api_key_pb2,
    audit_pb2,
    audit_pb2_grpc,
    run_pb2,
    telemetry_pb2,
    tenant_pb2,
    tool_pb2,
)
from tests import helpers as h
from tests.conftest import Live
from tests.integration.test_agent_runs import run_to_end, stage, support_agent
from tests.integration.test_cli import cli
from tests.integration.test_telemetry import event, eventually, send

Code = grpc.StatusCode


def audit(live: Live) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(live.channel)


async def records(live: Live, parent: str, action: str = "") -> list[audit_pb2.AuditRecord]:
    got: list[audit_pb2.AuditRecord] = []
    request = audit_pb2.ListAuditRecordsRequest(parent=parent, page_size=2, action_prefix=action)
    while True:  # small pages: paging is part of what is tested
        response = await audit(live).ListAuditRecords(request, metadata=live.md())
        got += response.records
        if not response.next_page_token:
            return got
        request.page_token = response.next_page_token


def chained(items: list[audit_pb2.AuditRecord]) -> auditchain.Verdict:
    return auditchain.verify(record_of(r) for r in items)


async def verify(live: Live, parent: str) -> audit_pb2.VerifyAuditLogResponse:
    return await audit(live).VerifyAuditLog(
        audit_pb2.VerifyAuditLogRequest(parent=parent), metadata=live.md()
    )


async def test_changes_are_chained_per_tenant_and_verify(live: Live) -> None:
    tenant = await support_agent(live)
    parent = f"tenants/{tenant}"
    # Reading a tenant's log is a use of the key in that tenant, on record once an hour:
    # read it once first, so that reading it below adds nothing.
    await verify(live, parent)
    await records(live, parent)
    # Writers racing in one tenant still make one unbroken chain.
    await asyncio.gather(
        *(
            live.tools.CreateTool(
                tool_pb2.CreateToolRequest(parent=parent, tool_id=f"t{i}", tool=h.tool()),
                metadata=live.md(),
            )
            for i in range(12)
        )
    )
    items = await records(live, parent)
    assert [r.sequence for r in items] == list(range(1, len(items) + 1))
    assert {r.chain for r in items} == {tenant}
    actions = [r.action for r in items]
    assert "Prompt.label.move" in actions and actions.count("Tool.create") == 13
    assert chained(items).intact
    verdict = await verify(live, parent)
    assert verdict.intact and verdict.verified == len(items)
    assert (verdict.head_sequence, verdict.head_hash) == (items[-1].sequence, items[-1].hash)
    only = await records(live, parent, action="Prompt.")
    assert {r.action for r in only} <= {
        "Prompt.create",
        "Prompt.label.move",
        "Prompt.version.create",
    }

    assert (items[0].action, items[0].resource) == ("Tenant.create", parent)


async def test_tampering_is_found_by_the_control_plane_and_the_cli(live: Live) -> None:
    tenant = await support_agent(live)
    parent = f"tenants/{tenant}"
    good = await cli(live, "audit", "verify", "--tenant", tenant)
    assert good.code == 0, good.err
    assert good.out.startswith("intact: ")
    head = good.out.strip().rsplit(" ", 1)[-1]
    listed = await cli(live, "audit", "list", "--tenant", tenant)
    assert listed.out.splitlines()[0].split() == [
        "SEQ",
        "TIME",
        "ACTOR",
        "ACTION",
        "RESOURCE",
        "DETAILS",
    ]

    items = await records(live, parent)
    second = items[1]
    async with live.plane.db.transaction() as conn:
        await conn.execute(
            audit_events.update()
            .where(audit_events.c.chain == tenant, audit_events.c.seq == second.sequence)
            .values(details='{"forged": true}')
        )
    verdict = await verify(live, parent)
    assert not verdict.intact and verdict.broken_sequence == second.sequence
    assert "hash" in verdict.problem
    broken = await cli(live, "audit", "verify", "--tenant", tenant)
    assert broken.code == 1 and broken.out.startswith("BROKEN: ")
    async with live.plane.db.transaction() as conn:
        await conn.execute(
            audit_events.update()
            .where(audit_events.c.chain == tenant, audit_events.c.seq == second.sequence)
            .values(details=second.details)
        )
    assert (await verify(live, parent)).intact

    # Cutting the last records off leaves a chain that checks out on its own: the
    # control plane's head, and a head recorded earlier, tell.
    await live.tools.CreateTool(
        tool_pb2.CreateToolRequest(parent=parent, tool_id="late", tool=h.tool()),
        metadata=live.md(),
    )
    async with live.plane.db.transaction() as conn:
        last = (
            await conn.execute(
                sa.select(sa.func.max(audit_events.c.seq)).where(audit_events.c.chain == tenant)
            )
        ).scalar_one()
        await conn.execute(
            audit_events.delete().where(audit_events.c.chain == tenant, audit_events.c.seq == last)
        )
    cut = await verify(live, parent)
    assert not cut.intact and "head" in cut.problem
    expected = await cli(live, "audit", "verify", "--tenant", tenant, "--expect-head", head)
    assert expected.code == 1  # the head check itself passes; the control plane's fails
    assert "the control plane finds" in expected.out


async def test_refused_calls_are_recorded_once_per_window(live: Live) -> None:
    tenant_a = await live.new_tenant("a")
    tenant_b = await live.new_tenant("b")
    key_a = await live.new_key(api_key_pb2.ROLE_OPERATOR, tenant_a)
    for _ in range(5):
        await h.fails(
            live.tenants.GetQuotaPolicy(
                tenant_pb2.GetQuotaPolicyRequest(name=f"tenants/{tenant_b}/quotaPolicy"),
                metadata=live.md(key_a),
            ),
            Code.PERMISSION_DENIED,
        )
    # Uses are on record too, in the tenant the key acted in, once per method and hour.
    for _ in range(3):
        await live.tenants.GetQuotaPolicy(
            tenant_pb2.GetQuotaPolicyRequest(name=f"tenants/{tenant_a}/quotaPolicy"),
            metadata=live.md(key_a),
        )
    used = await records(live, f"tenants/{tenant_a}", action="key.used")
    reads = [r for r in used if r.resource == "/pilothouse.v1.TenantService/GetQuotaPolicy"]
    assert [r.actor for r in reads] == [f"apiKeys/{key_a.split('_')[1]}"]
    refused = await records(live, f"tenants/{tenant_b}", action="key.refused")
    assert len(refused) == 1
    [record] = refused
    assert record.actor.startswith("apiKeys/") and record.resource.endswith("GetQuotaPolicy")
    assert json.loads(record.details)["code"] == "PERMISSION_DENIED"

    bogus = "ph_" + "a" * 12 + "_" + "b" * 43
    await h.fails(
        live.tenants.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=live.md(bogus)),
        Code.UNAUTHENTICATED,
    )
    system = await records(live, "system", action="key.refused")
    assert any(r.actor == "apiKeys/" + "a" * 12 for r in system)


async def test_executor_decisions_join_the_tenants_chain_once(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    parent = f"tenants/{tenant}"
    async with stage(live, own_run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        done = await run_to_end(
            s,
            key,
            run_pb2.RunAgentRequest(
                agent=f"{parent}/agents/helper", input="x", variables={"customer": "A"}
            ),
        )
        assert done[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        # A key of another tenant reaching for the run is refused, in this tenant's log.
        other = await s.client_key(await live.new_tenant("other"))
        for _ in range(3):
            await h.fails(
                s.agents.GetRun(
                    run_pb2.GetRunRequest(name=done[0].run),
                    metadata=(("authorization", f"Bearer {other}"),),
                ),
                Code.PERMISSION_DENIED,
            )

        await live.tenants.UpdateQuotaPolicy(
            tenant_pb2.UpdateQuotaPolicyRequest(
                quota_policy=tenant_pb2.QuotaPolicy(
                    name=f"{parent}/quotaPolicy", max_concurrent_runs=0
                )
            ),
            metadata=live.md(),
        )
        await s.settled()
        refused = await h.fails(
            run_to_end(
                s,
                key,
                run_pb2.RunAgentRequest(
                    agent=f"{parent}/agents/helper", input="x", variables={"customer": "A"}
                ),
            ),
            Code.RESOURCE_EXHAUSTED,
        )
        assert "runs as many runs" in (refused.details() or "")

        async def both() -> list[audit_pb2.AuditRecord] | None:
            got = [r for r in await records(live, parent) if r.actor.startswith("executors/")]
            wanted = {"run.stopped", "quota.refused", "key.refused", "key.used"}
            return got if {r.action for r in got} == wanted else None

        executor_records = await eventually(both)
    stopped = next(r for r in executor_records if r.action == "run.stopped")
    assert stopped.resource == done[0].run and stopped.event_id
    quota = next(r for r in executor_records if r.action == "quota.refused")
    assert quota.resource == f"{parent}/agents/helper"
    assert json.loads(quota.details)["limit"] == "max_concurrent_runs"
    [refusal] = [r for r in executor_records if r.action == "key.refused"]
    assert refusal.resource == "/pilothouse.v1.AgentService/GetRun"
    # The client's key was used to run agents: once on record per method and hour.
    [used] = [r for r in executor_records if r.action == "key.used"]
    assert used.resource == "/pilothouse.v1.AgentService/RunAgent"
    assert json.loads(used.details)["key"].startswith("apiKeys/")

    # The same event again (a relay's resend) adds nothing, and the chain holds.
    before = await records(live, parent)
    key_x = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    again = event(
        tenant,
        done[0].run.rsplit("/", 1)[-1],
        99,
        datetime.now(UTC),
        audit=telemetry_pb2.AuditEvent(action="run.stopped", details="{}"),
    )
    again.id = stopped.event_id
    fresh = event(
        tenant,
        str(uuid.uuid4()),
        1,
        datetime.now(UTC),
        audit=telemetry_pb2.AuditEvent(action="run.stopped", details="{}"),
    )
    [answer] = await send(
        live,
        key_x,
        telemetry_pb2.StreamEventsRequest(executor="x", batch_sequence=1, events=[again, fresh]),
    )
    assert answer.duplicates == 1 and not answer.rejected
    after = await records(live, parent)
    assert len(after) == len(before) + 1
    assert (await verify(live, parent)).intact


async def test_audit_reads_check_parent_and_tenant(live: Live) -> None:
    tenant = await live.new_tenant()
    bad = await h.fails(
        audit(live).ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(parent="tenants"), metadata=live.md()
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "parent" in h.field_violations(bad)
    operator = await live.new_key(api_key_pb2.ROLE_OPERATOR, tenant)
    await h.fails(
        audit(live).VerifyAuditLog(
            audit_pb2.VerifyAuditLogRequest(parent="system"), metadata=live.md(operator)
        ),
        Code.PERMISSION_DENIED,
    )
    client = await live.new_key(api_key_pb2.ROLE_CLIENT, tenant)
    await h.fails(
        audit(live).ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(parent=f"tenants/{tenant}"),
            metadata=live.md(client),
        ),
        Code.PERMISSION_DENIED,
    )
