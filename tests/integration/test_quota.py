"""QuotaService over gRPC: leases never grant more than a tenant's limits leave, shares
are fair, expired leases give back their shares and slots (not their unreported USD),
and bad requests get clear errors."""

from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal

import grpc
import pytest

from pilothouse.v1 import api_key_pb2, quota_pb2, quota_pb2_grpc, tenant_pb2
from tests import helpers as h
from tests.conftest import Live, start_live
from tests.integration.test_cli import cli

Code = grpc.StatusCode


async def limited_tenant(live: Live, **limits: object) -> str:
    tenant = await live.new_tenant("q")
    policy = tenant_pb2.QuotaPolicy(name=f"tenants/{tenant}/quotaPolicy", **limits)  # type: ignore[arg-type]
    await live.tenants.UpdateQuotaPolicy(
        tenant_pb2.UpdateQuotaPolicyRequest(quota_policy=policy), metadata=live.md()
    )
    return tenant


def amounts(**values: object) -> quota_pb2.QuotaAmounts:
    return quota_pb2.QuotaAmounts(**values)  # type: ignore[arg-type]


def balances(response: quota_pb2.GetBalanceResponse) -> dict[str, quota_pb2.QuotaBalance]:
    return {b.limit: b for b in response.balances}


async def test_leases_share_a_budget_and_never_pass_it(live: Live) -> None:
    tenant = await limited_tenant(
        live, usd_per_day="1.00", max_concurrent_runs=4, tokens_per_minute=1000
    )
    quota = quota_pb2_grpc.QuotaServiceStub(live.channel)
    md = live.md(await live.new_key(api_key_pb2.ROLE_EXECUTOR, None))
    parent = f"tenants/{tenant}"

    a = await quota.AcquireLease(
        quota_pb2.AcquireLeaseRequest(
            tenant=parent,
            executor="exec-a",
            wants=amounts(usd="0.7", run_slots=4, tokens_per_minute=1000),
        ),
        metadata=md,
    )
    assert a.lease_id and a.granted.usd == "0.7"
    assert a.granted.run_slots == 4 and a.granted.tokens_per_minute == 1000
    assert not a.granted.HasField("requests_per_minute"), "not limited"
    assert (a.free.usd, a.free.run_slots, a.held_elsewhere.usd) == ("0.3", 0, "0")
    # Nothing of the slots and rate left free: renew ten times as often (5 s / 10).
    assert a.refresh_interval.ToTimedelta().total_seconds() == 0.5

    # B wants as much: only what A leaves free, though its fair share is half.
    b = await quota.AcquireLease(
        quota_pb2.AcquireLeaseRequest(
            tenant=parent,
            executor="exec-b",
            wants=amounts(usd="0.7", run_slots=4, tokens_per_minute=1000),
        ),
        metadata=md,
    )
    assert b.granted.usd == "0.3"
    assert b.granted.run_slots == 0 and b.granted.tokens_per_minute == 0
    assert (b.free.usd, b.held_elsewhere.usd, b.held_elsewhere.run_slots) == ("0", "0.7", 4)

    # A renews: it spent 0.5, keeps the one slot it uses, and gets its fair shares.
    a = await quota.AcquireLease(
        quota_pb2.AcquireLeaseRequest(
            tenant=parent,
            executor="exec-a",
            lease_id=a.lease_id,
            spent_usd="0.5",
            in_use=amounts(run_slots=1),
            wants=amounts(usd="0.7", run_slots=4, tokens_per_minute=1000),
        ),
        metadata=md,
    )
    assert a.granted.usd == "0.2"  # 1.00 - 0.5 spent - 0.3 held by B
    assert a.granted.run_slots == 2 and a.granted.tokens_per_minute == 500
    b = await quota.AcquireLease(
        quota_pb2.AcquireLeaseRequest(
            tenant=parent,
            executor="exec-b",
            lease_id=b.lease_id,
            in_use=amounts(usd="0.3"),
            wants=amounts(usd="0.7", run_slots=4, tokens_per_minute=1000),
        ),
        metadata=md,
    )
    assert b.granted.usd == "0.3" and b.granted.run_slots == 2
    assert b.granted.tokens_per_minute == 500

    got = balances(
        await quota.GetBalance(quota_pb2.GetBalanceRequest(tenant=parent), metadata=live.md())
    )
    day = got["usd_per_day"]
    assert (day.allowed, day.spent, day.held, day.remaining) == ("1", "0.5", "0.5", "0")
    assert day.HasField("window_end_time")
    assert (got["max_concurrent_runs"].held, got["max_concurrent_runs"].remaining) == ("4", "0")

    # Releasing reports the last spending and gives the rest back.
    await quota.ReleaseLease(
        quota_pb2.ReleaseLeaseRequest(tenant=parent, lease_id=b.lease_id, spent_usd="0.25"),
        metadata=md,
    )
    got = balances(
        await quota.GetBalance(quota_pb2.GetBalanceRequest(tenant=parent), metadata=live.md())
    )
    assert (got["usd_per_day"].spent, got["usd_per_day"].remaining) == ("0.75", "0.05")
    assert got["max_concurrent_runs"].remaining == "2"


async def test_racing_leases_never_hold_more_than_remains(live: Live) -> None:
    await race_for_a_budget([live])


async def race_for_a_budget(replicas: list[Live]) -> None:
    """Many executors renewing at once (through each of ``replicas`` in turn), spending
    what they hold: the USD reported spent plus the USD held never passes the budget,
    and every slot granted exists."""
    live = replicas[0]
    tenant = await limited_tenant(live, usd_per_day="10", max_concurrent_runs=7)
    md = live.md(await live.new_key(api_key_pb2.ROLE_EXECUTOR, None))
    parent = f"tenants/{tenant}"
    spent_total = Decimal(0)
    rng = random.Random(7)

    async def executor(n: int) -> None:
        nonlocal spent_total
        quota = quota_pb2_grpc.QuotaServiceStub(replicas[n % len(replicas)].channel)
        lease_id, held, spent = "", Decimal(0), Decimal(0)
        for _ in range(12):
            response = await quota.AcquireLease(
                quota_pb2.AcquireLeaseRequest(
                    tenant=parent,
                    executor=f"exec-{n}",
                    lease_id=lease_id,
                    spent_usd=str(spent),
                    wants=amounts(usd="1.5", run_slots=3),
                ),
                metadata=md,
            )
            lease_id, held = response.lease_id, Decimal(response.granted.usd)
            spent = (held * Decimal(rng.randint(0, 100)) / 100).quantize(Decimal("0.000001"))
            spent_total += spent
        await quota.ReleaseLease(
            quota_pb2.ReleaseLeaseRequest(tenant=parent, lease_id=lease_id, spent_usd=str(spent)),
            metadata=md,
        )

    quota = quota_pb2_grpc.QuotaServiceStub(live.channel)

    async def audit() -> None:
        for _ in range(30):
            got = balances(
                await quota.GetBalance(
                    quota_pb2.GetBalanceRequest(tenant=parent), metadata=live.md()
                )
            )
            day = got["usd_per_day"]
            assert Decimal(day.spent) + Decimal(day.held) <= 10
            assert int(got["max_concurrent_runs"].held) <= 7
            await asyncio.sleep(0.005)

    await asyncio.gather(*(executor(i) for i in range(8)), audit())
    day = balances(
        await quota.GetBalance(quota_pb2.GetBalanceRequest(tenant=parent), metadata=live.md())
    )["usd_per_day"]
    assert Decimal(day.spent) == spent_total <= 10
    assert day.held == "0"


async def test_expired_lease_frees_its_slots_but_not_its_unreported_usd(
    database_url: str,
) -> None:
    live = await start_live(database_url, quota_lease_ttl=0.3, quota_refresh=0.1)
    try:
        tenant = await limited_tenant(live, usd_per_day="1", max_concurrent_runs=2)
        quota = quota_pb2_grpc.QuotaServiceStub(live.channel)
        md = live.md(await live.new_key(api_key_pb2.ROLE_EXECUTOR, None))
        parent = f"tenants/{tenant}"
        wants = amounts(usd="0.6", run_slots=2)
        gone = await quota.AcquireLease(
            quota_pb2.AcquireLeaseRequest(tenant=parent, executor="dead", wants=wants),
            metadata=md,
        )
        assert gone.granted.run_slots == 2 and gone.granted.usd == "0.6"
        await asyncio.sleep(0.4)
        fresh = await quota.AcquireLease(
            quota_pb2.AcquireLeaseRequest(tenant=parent, executor="alive", wants=wants),
            metadata=md,
        )
        assert fresh.granted.run_slots == 2, "the dead executor's slots came back"
        assert fresh.granted.usd == "0.4", "what it may have spent did not"
        # The dead executor was only cut off: renewing, it reports and the rest returns.
        back = await quota.AcquireLease(
            quota_pb2.AcquireLeaseRequest(
                tenant=parent,
                executor="dead",
                lease_id=gone.lease_id,
                spent_usd="0.1",
                wants=amounts(),
            ),
            metadata=md,
        )
        assert back.lease_id == gone.lease_id and back.granted.usd == "0"
        day = balances(
            await quota.GetBalance(quota_pb2.GetBalanceRequest(tenant=parent), metadata=live.md())
        )["usd_per_day"]
        assert (day.spent, day.held, day.remaining) == ("0.1", "0.4", "0.5")
    finally:
        await live.channel.close()
        await live.plane.aclose()


async def test_unlimited_tenant_leases_nothing_and_balances_nothing(live: Live) -> None:
    tenant = await live.new_tenant("q")
    quota = quota_pb2_grpc.QuotaServiceStub(live.channel)
    md = live.md(await live.new_key(api_key_pb2.ROLE_EXECUTOR, None))
    lease = await quota.AcquireLease(
        quota_pb2.AcquireLeaseRequest(
            tenant=f"tenants/{tenant}", executor="e", wants=amounts(usd="5", run_slots=3)
        ),
        metadata=md,
    )
    assert lease.granted == quota_pb2.QuotaAmounts()
    got = await quota.GetBalance(
        quota_pb2.GetBalanceRequest(tenant=f"tenants/{tenant}"), metadata=live.md()
    )
    assert list(got.balances) == [] and got.leases == 1


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (
            quota_pb2.AcquireLeaseRequest(tenant="nope", executor="e"),
            Code.INVALID_ARGUMENT,
            "tenant",
        ),
        (quota_pb2.AcquireLeaseRequest(tenant="tenants/{t}"), Code.INVALID_ARGUMENT, "executor"),
        (
            quota_pb2.AcquireLeaseRequest(tenant="tenants/{t}", executor="e", spent_usd="lots"),
            Code.INVALID_ARGUMENT,
            "spent_usd",
        ),
        (
            quota_pb2.AcquireLeaseRequest(
                tenant="tenants/{t}", executor="e", wants=amounts(usd="-1")
            ),
            Code.INVALID_ARGUMENT,
            "wants.usd",
        ),
        (
            quota_pb2.AcquireLeaseRequest(
                tenant="tenants/{t}", executor="e", in_use=amounts(run_slots=-1)
            ),
            Code.INVALID_ARGUMENT,
            "in_use.run_slots",
        ),
        (quota_pb2.ReleaseLeaseRequest(tenant="tenants/{t}"), Code.INVALID_ARGUMENT, "lease_id"),
        (
            quota_pb2.AcquireLeaseRequest(tenant="tenants/no-such-tenant", executor="e"),
            Code.NOT_FOUND,
            "",
        ),
    ],
)
async def test_bad_requests_are_refused_naming_the_field(
    live: Live, request_: quota_pb2.AcquireLeaseRequest, code: grpc.StatusCode, field: str
) -> None:
    tenant = await limited_tenant(live, usd_per_day="1")
    quota = quota_pb2_grpc.QuotaServiceStub(live.channel)
    md = live.md(await live.new_key(api_key_pb2.ROLE_EXECUTOR, None))
    request = type(request_)()
    request.CopyFrom(request_)
    request.tenant = request.tenant.replace("{t}", tenant)
    method = (
        quota.AcquireLease
        if isinstance(request, quota_pb2.AcquireLeaseRequest)
        else quota.ReleaseLease
    )
    err = await h.fails(method(request, metadata=md), code)  # type: ignore[operator]
    if field:
        assert field in h.field_violations(err)


async def test_a_lease_is_its_executors_and_clients_may_not_lease(live: Live) -> None:
    tenant = await limited_tenant(live, usd_per_day="1")
    quota = quota_pb2_grpc.QuotaServiceStub(live.channel)
    md = live.md(await live.new_key(api_key_pb2.ROLE_EXECUTOR, None))
    parent = f"tenants/{tenant}"
    lease = await quota.AcquireLease(
        quota_pb2.AcquireLeaseRequest(tenant=parent, executor="a", wants=amounts(usd="0.5")),
        metadata=md,
    )
    await h.fails(
        quota.AcquireLease(
            quota_pb2.AcquireLeaseRequest(tenant=parent, executor="b", lease_id=lease.lease_id),
            metadata=md,
        ),
        Code.FAILED_PRECONDITION,
    )
    client = live.md(await live.new_key(api_key_pb2.ROLE_CLIENT, tenant))
    await h.fails(
        quota.AcquireLease(
            quota_pb2.AcquireLeaseRequest(tenant=parent, executor="c"), metadata=client
        ),
        Code.PERMISSION_DENIED,
    )


async def test_cli_shows_a_tenants_balance(live: Live) -> None:
    tenant = await limited_tenant(live, usd_per_day="2.5", max_concurrent_runs=3)
    quota = quota_pb2_grpc.QuotaServiceStub(live.channel)
    md = live.md(await live.new_key(api_key_pb2.ROLE_EXECUTOR, None))
    await quota.AcquireLease(
        quota_pb2.AcquireLeaseRequest(
            tenant=f"tenants/{tenant}", executor="e", wants=amounts(usd="1", run_slots=1)
        ),
        metadata=md,
    )
    table = await cli(live, "quota", "--tenant", tenant)
    assert table.code == 0, table.err
    header, day, slots, leases = table.out.strip().splitlines()
    assert header.split() == ["LIMIT", "ALLOWED", "SPENT", "HELD", "REMAINING", "WINDOW", "ENDS"]
    assert day.split()[:5] == ["usd_per_day", "2.5", "0", "1", "1.5"]
    assert slots.split()[:5] == ["max_concurrent_runs", "3", "-", "1", "2"]
    assert leases.startswith("1 executor leases live; fail_closed")
    data = json.loads((await cli(live, "quota", "--tenant", tenant, "-o", "json")).out)
    assert data["balances"][0]["remaining"] == "1.5"
    missing = await cli(live, "quota")
    assert missing.code == 2 and "--tenant" in missing.err
