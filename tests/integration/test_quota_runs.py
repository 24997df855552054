"""Tenants' quotas on real executors: runs past a limit are refused with QuotaFailure and
retry info, a USD budget is never overspent by runs racing on two executors, and when
the control plane is gone, leases run out and the failure mode decides."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from pilothouse.v1 import quota_pb2, quota_pb2_grpc, run_pb2, tenant_pb2
from tests import helpers as h
from tests.conftest import Live, start_live
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_agent_runs import run_to_end, stage, support_agent
from tests.integration.test_telemetry import eventually

Code = grpc.StatusCode


async def set_policy(live: Live, tenant: str, **limits: object) -> None:
    policy = tenant_pb2.QuotaPolicy(name=f"tenants/{tenant}/quotaPolicy", **limits)  # type: ignore[arg-type]
    await live.tenants.UpdateQuotaPolicy(
        tenant_pb2.UpdateQuotaPolicyRequest(quota_policy=policy), metadata=live.md()
    )


def request(tenant: str) -> run_pb2.RunAgentRequest:
    return run_pb2.RunAgentRequest(
        agent=f"tenants/{tenant}/agents/helper",
        input="six times seven?",
        variables={"customer": "A"},
    )


def quota_failure(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.QuotaFailure, float]:
    """The refusal's QuotaFailure and its retry delay in seconds."""
    failure, retry = error_details_pb2.QuotaFailure(), None
    for detail in h.rich_status(error).details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            detail.Unpack(failure)
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToTimedelta().total_seconds()
    assert failure.violations and retry is not None, "QuotaFailure and RetryInfo"
    return failure, retry


async def balance(live: Live, tenant: str) -> dict[str, quota_pb2.QuotaBalance]:
    stub = quota_pb2_grpc.QuotaServiceStub(live.channel)
    got = await stub.GetBalance(
        quota_pb2.GetBalanceRequest(tenant=f"tenants/{tenant}"), metadata=live.md()
    )
    return {b.limit: b for b in got.balances}


async def test_a_run_past_the_concurrency_limit_is_refused_with_quota_failure(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    fake = await FakeOpenAI(default_delay=0.5).start()
    try:
        tenant = await support_agent(live, model=h.openai_model(fake.base_url))
        await set_policy(live, tenant, max_concurrent_runs=1)
        async with stage(live, run_database_url, tmp_path) as s:
            key = await s.client_key(tenant)
            await s.settled()
            md = (("authorization", f"Bearer {key}"),)
            first = s.agents.RunAgent(request(tenant), metadata=md)
            started = await first.read()
            assert started.event.WhichOneof("event") == "run_started"

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await run_to_end(s, key, request(tenant))
            assert refused.value.code() == Code.RESOURCE_EXHAUSTED
            failure, retry = quota_failure(refused.value)
            [violation] = failure.violations
            assert violation.subject == f"tenants/{tenant}"
            assert violation.description.startswith("max_concurrent_runs")
            assert 0 < retry <= 5

            while (response := await first.read()) is not grpc.aio.EOF:
                last = response.event
            assert last.run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            # The slot came back with the run's end.
            again = await run_to_end(s, key, request(tenant))
            assert again[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
    finally:
        await fake.aclose()


async def test_a_spent_budget_refuses_runs_until_its_window_ends(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    await set_policy(live, tenant, usd_per_day="0")
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await run_to_end(s, key, request(tenant))
        assert refused.value.code() == Code.RESOURCE_EXHAUSTED
        failure, retry = quota_failure(refused.value)
        assert failure.violations[0].description.startswith("usd_per_day")
        assert 0 < retry <= 24 * 3600
        # A run queued for the pool is refused the same way, not failed later.
        with pytest.raises(grpc.aio.AioRpcError) as queued:
            await s.agents.StartRun(
                run_pb2.StartRunRequest(
                    agent=f"tenants/{tenant}/agents/helper",
                    input="six times seven?",
                    variables={"customer": "A"},
                ),
                metadata=(("authorization", f"Bearer {key}"),),
            )
        assert queued.value.code() == Code.RESOURCE_EXHAUSTED
        failure, retry = quota_failure(queued.value)
        assert failure.violations[0].description.startswith("usd_per_day")


async def test_racing_runs_on_two_executors_never_overspend_the_budget(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    # Output is what costs, so a call's worst case (its most output) is a few times what
    # it spends; 20 runs at once cost more than the budget, their first calls less.
    model = h.model(input_price_per_million="0", output_price_per_million="1000")
    model.max_output_tokens = 40
    first = model.scripted.rules.add(on_step=1)
    first.tool_calls.add(tool="calc").arguments.update({"expression": "6 * 7"})
    model.scripted.rules.add(on_step=2, answer="The answer is {{last_tool_result}}")
    tenant = await support_agent(live, model=model)
    budget = Decimal("0.2")
    await set_policy(live, tenant, usd_per_day=str(budget))
    async with (
        stage(live, own_run_database_url, tmp_path / "a") as a,
        stage(live, own_run_database_url, tmp_path / "b") as b,
    ):
        key = await a.client_key(tenant)
        await a.settled()
        await b.settled()

        async def one(n: int) -> tuple[str, Decimal]:
            s = a if n % 2 else b
            try:
                events = await run_to_end(s, key, request(tenant))
            except grpc.aio.AioRpcError as e:
                assert e.code() == Code.RESOURCE_EXHAUSTED, e.details()
                quota_failure(e)
                return "refused", Decimal(0)
            stopped = events[-1].run_stopped
            if stopped.reason == run_pb2.STOP_REASON_BUDGET_EXCEEDED:
                assert stopped.detail.startswith("tenant quota"), stopped.detail
            return run_pb2.StopReason.Name(stopped.reason), Decimal(stopped.usage.cost_usd)

        outcomes = await asyncio.gather(*(one(n) for n in range(20)))
    spent = sum((cost for _, cost in outcomes), Decimal(0))
    reasons = {reason for reason, _ in outcomes}
    assert "STOP_REASON_COMPLETED" in reasons
    assert reasons & {"refused", "STOP_REASON_BUDGET_EXCEEDED"}, "the budget ran out"
    assert spent <= budget
    # Both executors gave their leases back on shutdown, reporting every cent.
    day = (await balance(live, tenant))["usd_per_day"]
    assert day.held == "0"
    assert abs(Decimal(day.spent) - spent) < Decimal("0.000001")


async def test_leases_run_out_without_the_control_plane_then_the_failure_mode_decides(
    database_url: str, own_run_database_url: str, tmp_path: Path
) -> None:
    plane = await start_live(database_url, quota_lease_ttl=3.0, quota_refresh=0.2)
    port = plane.plane.port
    closed = await support_agent(plane)
    opened = await support_agent(plane)
    await set_policy(plane, closed, max_concurrent_runs=5)
    await set_policy(
        plane, opened, usd_per_day="10", failure_mode=tenant_pb2.FAILURE_MODE_FAIL_OPEN
    )
    async with stage(plane, own_run_database_url, tmp_path) as s:
        keys = {t: await s.client_key(t) for t in (closed, opened)}
        await s.settled()
        costs = []
        for tenant in (closed, opened):
            done = await run_to_end(s, keys[tenant], request(tenant))
            assert done[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            costs.append(Decimal(done[-1].run_stopped.usage.cost_usd))

        await plane.channel.close()
        await plane.plane.aclose()
        # Within its lease an executor goes on; past it, fail closed refuses...
        still = await run_to_end(s, keys[closed], request(closed))
        assert still[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        lease = s.executor.quotas.leases[closed]

        async def expired() -> bool | None:
            return True if not lease.in_force() else None

        await eventually(expired)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await run_to_end(s, keys[closed], request(closed))
        assert refused.value.code() == Code.RESOURCE_EXHAUSTED
        assert "cannot be reached" in (refused.value.details() or "")
        quota_failure(refused.value)
        # ... and fail open admits, accounting for the spending once it can.
        outage = await run_to_end(s, keys[opened], request(opened))
        assert outage[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        opened_spent = costs[1] + Decimal(outage[-1].run_stopped.usage.cost_usd)

        plane = await start_live(
            database_url, listen=f"127.0.0.1:{port}", bootstrap_key=plane.admin_key
        )
        try:

            async def reported() -> Decimal | None:
                spent = Decimal((await balance(plane, opened))["usd_per_day"].spent)
                return spent if spent >= opened_spent else None

            spent = await eventually(reported)
            assert spent - opened_spent < Decimal("0.000001")
            back = await run_to_end(s, keys[closed], request(closed))
            assert back[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        finally:
            await plane.channel.close()
            await plane.plane.aclose()


async def test_the_request_rate_refuses_runs_once_its_bucket_is_empty(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)  # two model calls a run
    await set_policy(live, tenant, requests_per_minute=2)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        done = await run_to_end(s, key, request(tenant))
        assert done[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await run_to_end(s, key, request(tenant))
        assert refused.value.code() == Code.RESOURCE_EXHAUSTED
        failure, retry = quota_failure(refused.value)
        assert failure.violations[0].description.startswith("requests_per_minute")
        assert 0 < retry <= 30, "a request comes back every 30 s"
