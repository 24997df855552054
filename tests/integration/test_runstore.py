"""The run store, on SQLite and PostgreSQL: claims, leases, fencing, checkpoints, the
journal, approvals, cancellation and dead letters."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from datetime import timedelta

import pytest

from dataplane.runstore.database import open_run_database
from dataplane.runstore.errors import IdempotencyConflict, LeaseLost
from dataplane.runstore.model import (
    CallEntry,
    CallState,
    NewEvent,
    OutboxEvent,
    RunState,
    StepCheckpoint,
    StopReason,
    Telemetry,
    UnsettledModelCall,
    stopped,
)
from dataplane.runstore.outbox import Outbox
from dataplane.runstore.store import NewRun, RunStore
from storekit.database import Database


def tenant() -> str:
    return f"t-{os.urandom(4).hex()}"


async def outbox_of(db: Database, t: str) -> list[OutboxEvent]:
    return await Outbox(db).peek(limit=10_000, tenant=t)


def new_run(t: str, **kwargs: object) -> NewRun:
    return NewRun(tenant=t, agent=f"tenants/{t}/agents/a", request={"input": "hi"}, **kwargs)  # type: ignore[arg-type]


async def test_idempotency_key_returns_the_same_run(run_db: Database) -> None:
    store = RunStore(run_db)
    t = tenant()
    first, _, created = await store.create(new_run(t, idempotency_key="order-1"))
    again, lease, created_again = await store.create(new_run(t, idempotency_key="order-1"))
    assert created and not created_again and lease is None
    assert again.id == first.id
    other, _, created_other = await store.create(new_run(tenant(), idempotency_key="order-1"))
    assert created_other and other.id != first.id, "keys are per tenant"
    with pytest.raises(IdempotencyConflict):
        await store.create(NewRun(t, f"tenants/{t}/agents/b", {}, idempotency_key="order-1"))


async def test_each_run_is_claimed_exactly_once_under_contention(
    run_db: Database, run_database_url: str
) -> None:
    t = tenant()
    store = RunStore(run_db)
    ids = {(await store.create(new_run(t)))[0].id for _ in range(30)}
    # Several executors, each with its own connection pool, race for the queue.
    pools = [open_run_database(run_database_url) for _ in range(4)]
    claimed: Counter[str] = Counter()

    async def executor(pool: Database, name: str) -> None:
        mine = RunStore(pool)
        while (got := await mine.claim(name)) is not None:
            lease, run = got
            if run.tenant == t:
                claimed[run.id] += 1

    try:
        await asyncio.gather(*(executor(p, f"exec-{i}") for i, p in enumerate(pools)))
    finally:
        for p in pools:
            await p.aclose()
    assert set(claimed) >= ids
    assert all(count == 1 for run_id, count in claimed.items() if run_id in ids)


async def test_an_expired_lease_moves_on_and_the_old_holder_is_fenced_off(run_db: Database) -> None:
    store = RunStore(run_db, lease_ttl=timedelta(milliseconds=200))
    t = tenant()
    run, lease_a, _ = await store.create(new_run(t, queued=False), owner="a")
    assert lease_a is not None and lease_a.token == 1
    lease_a = await store.renew(lease_a)
    await asyncio.sleep(0.3)
    got = await store.claim("b", run_id=run.id)
    assert got is not None
    lease_b, claimed = got
    assert lease_b.token == 2 and claimed.attempts == 1 and claimed.lease_owner == "b"
    with pytest.raises(LeaseLost):
        await store.checkpoint(lease_a, step=1, delta={"x": 1}, usage={})
    with pytest.raises(LeaseLost):
        await store.renew(lease_a)
    with pytest.raises(LeaseLost):
        await store.finish(lease_a, StopReason.COMPLETED)
    await store.checkpoint(lease_b, step=1, delta={"x": 2}, usage={"tokens": 3})
    cps, _ = await store.history(run.id)
    assert [cp.delta for cp in cps] == [{"x": 2}]
    assert await store.claim("c", run_id=run.id) is None, "a live lease is not claimable"


async def test_a_run_created_leased_can_carry_its_opening_checkpoint(run_db: Database) -> None:
    store = RunStore(run_db)
    t = tenant()
    first = StepCheckpoint(0, {"messages": ["hello"]}, {"calls": 0}, [NewEvent("began", {})])
    run, lease, _ = await store.create(new_run(t, queued=False, opening=first), owner="a")
    assert lease is not None and run.usage == {"calls": 0}
    lease = await store.checkpoint(
        lease, step=1, delta={"n": 1}, usage={"calls": 1}, events=[NewEvent("step", {})]
    )
    cps, _ = await store.history(run.id)
    assert [(cp.seq, cp.step, cp.delta) for cp in cps] == [
        (1, 0, {"messages": ["hello"]}),
        (2, 1, {"n": 1}),
    ]
    events = await store.events(run.id)
    assert [(e.seq, e.type) for e in events] == [(1, "began"), (2, "step")]
    assert events[0].time == run.created_at, "stamped as the caller is told"
    queued, _, _ = await store.create(new_run(t, opening=first))
    assert await store.history(queued.id) == ([], []) and await store.events(queued.id) == []


async def test_the_last_checkpoint_goes_with_the_end_or_not_at_all(run_db: Database) -> None:
    store = RunStore(run_db, lease_ttl=timedelta(milliseconds=200))
    t = tenant()
    run, lease, _ = await store.create(new_run(t, queued=False), owner="a")
    assert lease is not None
    lease = await store.checkpoint(
        lease, step=1, delta={"n": 1}, usage={"calls": 1}, events=[NewEvent("step", {"n": 1})]
    )
    ending = StepCheckpoint(2, {"n": 2}, {"calls": 2}, [NewEvent("step", {"n": 2})])
    await store.finish(
        lease,
        StopReason.COMPLETED,
        final_answer="done",
        events=[NewEvent("final_answer", {"text": "done"})],
        checkpoint=ending,
    )
    cps, _ = await store.history(run.id)
    assert [(cp.step, cp.delta) for cp in cps] == [(1, {"n": 1}), (2, {"n": 2})]
    finished = await store.get(run.id)
    assert finished.state is RunState.FINISHED and finished.step == 2
    assert finished.usage == {"calls": 2}
    events = await store.events(run.id)
    assert [(e.seq, e.type) for e in events] == [(1, "step"), (2, "step"), (3, "final_answer")]
    [audit] = [e for e in await outbox_of(run_db, t) if e.run_id == run.id and e.kind == "audit"]
    assert (audit.payload["steps"], audit.payload["usage"]) == (2, {"calls": 2})

    # A holder fenced off writes neither the checkpoint nor the end.
    other, stale, _ = await store.create(new_run(tenant(), queued=False), owner="a")
    assert stale is not None
    await asyncio.sleep(0.3)
    assert await store.claim("b", run_id=other.id) is not None
    with pytest.raises(LeaseLost):
        await store.finish(stale, StopReason.COMPLETED, checkpoint=ending)
    cps, _ = await store.history(other.id)
    assert cps == [] and await store.events(other.id) == []
    assert (await store.get(other.id)).state is RunState.RUNNING


async def test_a_step_reply_can_go_with_the_steps_results(run_db: Database) -> None:
    store = RunStore(run_db)
    run, lease, _ = await store.create(new_run(tenant(), queued=False), owner="a")
    assert lease is not None
    reply = StepCheckpoint(0, {"n": "reply"}, {"calls": 1}, [NewEvent("requested", {})])
    call = CallEntry(1, 0, "c1", "calc", {}, CallState.COMPLETED, {"ok": 1})
    lease = await store.checkpoint(
        lease,
        step=1,
        delta={"n": "results"},
        usage={"calls": 2},
        events=[NewEvent("finished", {})],
        call=call,
        preceding=[reply],
    )
    cps, journal = await store.history(run.id)
    assert [(cp.seq, cp.step, cp.delta) for cp in cps] == [
        (1, 0, {"n": "reply"}),
        (2, 1, {"n": "results"}),
    ]
    assert [(j.call_id, j.state) for j in journal] == [("c1", CallState.COMPLETED)]
    assert [(e.seq, e.type) for e in await store.events(run.id)] == [
        (1, "requested"),
        (2, "finished"),
    ]
    now = await store.get(run.id)
    assert (now.step, now.usage) == (1, {"calls": 2})
    # Numbering goes on after both.
    await store.checkpoint(lease, step=2, delta={"n": 3}, usage={}, events=[NewEvent("e", {})])
    cps, _ = await store.history(run.id)
    assert [cp.seq for cp in cps] == [1, 2, 3]
    assert [e.seq for e in await store.events(run.id)] == [1, 2, 3]


async def test_checkpoints_grow_linearly_and_replay_in_order(run_db: Database) -> None:
    store = RunStore(run_db)
    run, lease, _ = await store.create(new_run(tenant(), queued=False), owner="a")
    assert lease is not None
    for step in range(1, 21):
        lease = await store.checkpoint(
            lease,
            step=step,
            delta={"messages": [{"role": "assistant", "content": "x" * 100}]},
            usage={"steps": step},
            events=[NewEvent("step_finished", {"step": step})],
        )
    cps, _ = await store.history(run.id)
    assert [cp.step for cp in cps] == list(range(1, 21))
    sizes = {len(json.dumps(cp.delta)) for cp in cps}
    assert len(sizes) == 1, "each checkpoint holds only what its step added"
    current = await store.get(run.id)
    assert current.step == 20 and current.usage == {"steps": 20}
    events = await store.events(run.id)
    assert [e.seq for e in events] == list(range(1, 21))
    assert [e.payload["step"] for e in await store.events(run.id, after=18)] == [19, 20]


async def test_journal_survives_a_change_of_holder(run_db: Database) -> None:
    store = RunStore(run_db, lease_ttl=timedelta(milliseconds=200))
    run, lease, _ = await store.create(new_run(tenant(), queued=False), owner="a")
    assert lease is not None
    call = {"step": 1, "call_index": 0, "call_id": "c1", "tool": "refund", "arguments": {"id": 7}}
    await store.record_call(lease, state=CallState.STARTED, **call)  # type: ignore[arg-type]
    await asyncio.sleep(0.3)  # the holder dies after the call went out
    got = await store.claim("b", run_id=run.id)
    assert got is not None
    lease_b, _ = got
    _, journal = await store.history(run.id)
    assert [(c.state, c.attempts) for c in journal] == [(CallState.STARTED, 1)]
    await store.record_call(lease_b, state=CallState.STARTED, **call)  # type: ignore[arg-type]
    await store.record_call(
        lease_b,
        state=CallState.COMPLETED,
        result={"refund": "ok"},
        **call,  # type: ignore[arg-type]
    )
    _, journal = await store.history(run.id)
    (entry,) = journal
    assert entry.state is CallState.COMPLETED and entry.attempts == 2
    assert entry.result == {"refund": "ok"} and entry.arguments == {"id": 7}
    with pytest.raises(LeaseLost):
        await store.record_call(lease, state=CallState.FAILED, **call)  # type: ignore[arg-type]


async def test_runs_lost_too_often_are_dead_lettered(run_db: Database) -> None:
    store = RunStore(run_db, lease_ttl=timedelta(milliseconds=100), max_attempts=2)
    run, _, _ = await store.create(new_run(tenant()))
    assert await store.claim("a", run_id=run.id) is not None
    await asyncio.sleep(0.15)
    assert await store.claim("b", run_id=run.id) is not None  # lost once
    await asyncio.sleep(0.15)
    assert await store.claim("c", run_id=run.id) is None  # lost twice: dead letter
    final = await store.get(run.id)
    assert final.state is RunState.FINISHED and final.stop_reason is StopReason.DEAD_LETTERED
    assert (await store.events(run.id))[-1].payload["reason"] == "STOP_REASON_DEAD_LETTERED"


async def test_a_released_run_waits_its_turn_then_counts_the_failure(run_db: Database) -> None:
    store = RunStore(run_db, max_attempts=2)
    run, lease, _ = await store.create(new_run(tenant(), queued=False), owner="a")
    assert lease is not None
    again = await store.release(lease, retry_after=timedelta(milliseconds=200), error="boom")
    assert again.state is RunState.QUEUED and again.attempts == 1
    assert await store.claim("b", run_id=run.id) is None
    await asyncio.sleep(0.25)
    got = await store.claim("b", run_id=run.id)
    assert got is not None
    final = await store.release(got[0], retry_after=timedelta(0), error="boom again")
    assert final.stop_reason is StopReason.DEAD_LETTERED and "boom again" in final.stop_detail


async def test_approval_waits_hold_no_lease(run_db: Database) -> None:
    store = RunStore(run_db)
    run, lease, _ = await store.create(new_run(tenant(), queued=False), owner="a")
    assert lease is not None
    await store.wait_for_approval(lease, [NewEvent("approval_required", {"call": "c1"})])
    waiting = await store.get(run.id)
    assert waiting.state is RunState.WAITING_APPROVAL and waiting.lease_owner == ""
    assert await store.claim("b", run_id=run.id) is None
    assert await store.make_claimable(run.id)
    assert not await store.make_claimable(run.id), "only a waiting run is released"
    got = await store.claim("b", run_id=run.id)
    assert got is not None and got[0].token == lease.token + 1
    assert got[1].attempts == 0, "a pause is not a failure"


async def test_cancellation(run_db: Database) -> None:
    store = RunStore(run_db)
    queued, _, _ = await store.create(new_run(tenant()))
    cancelled = await store.request_cancel(queued.id)
    assert cancelled.state is RunState.FINISHED and cancelled.stop_reason is StopReason.CANCELLED
    running, lease, _ = await store.create(new_run(tenant(), queued=False), owner="a")
    assert lease is not None
    flagged = await store.request_cancel(running.id)
    assert flagged.state is RunState.RUNNING and flagged.cancel_requested
    await store.finish(lease, StopReason.CANCELLED, detail="asked to stop")
    assert (await store.get(running.id)).stop_reason is StopReason.CANCELLED


async def test_listing_is_per_tenant_newest_first(run_db: Database) -> None:
    store = RunStore(run_db)
    t = tenant()
    made = [(await store.create(new_run(t)))[0] for _ in range(5)]
    await store.create(new_run(tenant()))
    page = await store.list_runs(t, before=None, limit=3)
    rest = await store.list_runs(t, before=(page[-1].created_at, page[-1].id), limit=3)
    assert [r.id for r in page + rest] == [r.id for r in reversed(made)]


async def test_every_way_a_run_ends_leaves_one_audit_record_in_the_outbox(
    run_db: Database,
) -> None:
    store = RunStore(run_db, lease_ttl=timedelta(milliseconds=100), max_attempts=1)
    t = tenant()
    completed, lease, _ = await store.create(new_run(t, queued=False), owner="a")
    assert lease is not None
    await store.checkpoint(
        lease, step=1, delta={"messages": []}, usage={"cost_usd": "0.01", "model_calls": 1}
    )
    await store.finish(lease, StopReason.COMPLETED, final_answer="done")
    with pytest.raises(LeaseLost):
        await store.finish(lease, StopReason.COMPLETED)  # a second end is refused
    queued, _, _ = await store.create(new_run(t))
    await store.request_cancel(queued.id)
    await store.request_cancel(queued.id)  # cancelling again ends nothing new
    lost, _, _ = await store.create(new_run(t))
    assert await store.claim("b", run_id=lost.id) is not None
    await asyncio.sleep(0.15)
    assert await store.claim("c", run_id=lost.id) is None  # dead-lettered
    failed, failing, _ = await store.create(new_run(t, queued=False), owner="d")
    assert failing is not None
    await store.release(failing, retry_after=timedelta(0), error="boom")

    records = [e for e in await outbox_of(run_db, t) if e.kind == "audit"]
    by_run = {e.run_id: e for e in records}
    assert len(records) == len(by_run) == 4
    assert {e.kind for e in records} == {"audit"} and {e.type for e in records} == {"run.stopped"}
    ended = await store.get(completed.id)
    assert ended.ended_at is not None
    assert by_run[completed.id].payload == {
        "run": completed.id,
        "agent": f"tenants/{t}/agents/a",
        "stop_reason": "completed",
        "detail": "",
        "steps": 1,
        "usage": {"cost_usd": "0.01", "model_calls": 1},
        "attempts": 0,
        "created_at": completed.created_at.isoformat(timespec="microseconds"),
        "ended_at": ended.ended_at.isoformat(timespec="microseconds"),
    }
    assert by_run[queued.id].payload["stop_reason"] == "cancelled"
    assert by_run[lost.id].payload["stop_reason"] == "dead_lettered"
    assert by_run[failed.id].payload["stop_reason"] == "dead_lettered"
    assert "boom" in by_run[failed.id].payload["detail"]


async def test_telemetry_goes_to_the_outbox_with_its_event_and_only_then(
    run_db: Database,
) -> None:
    store = RunStore(run_db, lease_ttl=timedelta(milliseconds=200))
    t = tenant()
    opening = StepCheckpoint(
        0, {}, {}, [NewEvent("run_started", {}, Telemetry("run_opened", {"n": 0}, "x1"))]
    )
    run, lease, _ = await store.create(new_run(t, queued=False, opening=opening), owner="a")
    assert lease is not None
    lease = await store.checkpoint(
        lease,
        step=1,
        delta={},
        usage={},
        events=[
            NewEvent("step_started", {"step": 1}),
            NewEvent("model_call_finished", {}, Telemetry("model_usage", {"n": 1}, "x1")),
        ],
    )
    await store.record_call(
        lease,
        step=1,
        call_index=0,
        call_id="c",
        tool="t",
        arguments={},
        state=CallState.COMPLETED,
        events=[NewEvent("tool_call_finished", {}, Telemetry("tool_usage", {"n": 2}, "x1"))],
    )
    await store.finish(
        lease,
        StopReason.COMPLETED,
        events=[stopped(StopReason.COMPLETED, "", {"model_calls": 1}, steps=1, executor="x1")],
    )
    rows = await outbox_of(run_db, t)
    telemetry = [e for e in rows if e.kind != "audit"]
    assert [(e.id, e.kind, e.type, e.payload, e.sequence) for e in telemetry] == [
        (f"{run.id}:1", "run_opened", "run_started", {"n": 0}, 1),
        (f"{run.id}:3", "model_usage", "model_call_finished", {"n": 1}, 3),
        (f"{run.id}:4", "tool_usage", "tool_call_finished", {"n": 2}, 4),
        (
            f"{run.id}:5",
            "run_ended",
            "run_stopped",
            {
                "reason": "STOP_REASON_COMPLETED",
                "detail": "",
                "usage": {"model_calls": 1},
                "steps": 1,
            },
            5,
        ),
    ]
    assert {e.executor for e in rows} == {"x1"}, "the audit record names the executor too"

    # A fenced-off write puts nothing in the outbox.
    other, stale, _ = await store.create(new_run(t, queued=False), owner="a")
    assert stale is not None
    await asyncio.sleep(0.3)
    assert await store.claim("b", run_id=other.id) is not None
    with pytest.raises(LeaseLost):
        await store.checkpoint(
            stale,
            step=1,
            delta={},
            usage={},
            events=[NewEvent("model_call_finished", {}, Telemetry("model_usage", {}))],
        )
    assert [e.run_id for e in await outbox_of(run_db, t)] == [run.id] * len(rows)


async def test_relays_claim_disjoint_batches_and_delivered_ones_leave(run_db: Database) -> None:
    store = RunStore(run_db)
    box = Outbox(run_db)
    t = tenant()
    for _ in range(6):
        queued, _, _ = await store.create(new_run(t))
        await store.request_cancel(queued.id)  # queued, ended, and the end's audit record
    mine = [e for e in await box.peek(limit=10_000) if e.tenant == t]
    assert len(mine) == 18
    # Claims by two relays at once never overlap, whatever else waits in the outbox.
    ttl = timedelta(seconds=30)
    first, second = await asyncio.gather(
        box.claim("r1", limit=100_000, ttl=ttl), box.claim("r2", limit=100_000, ttl=ttl)
    )
    ours = {e.id for e in mine}
    a = {e.id for e in first} & ours
    b = {e.id for e in second} & ours
    assert not a & b and a | b == ours
    assert await box.claim("r3", limit=100, ttl=ttl) == [], "everything is claimed"
    # A relay that failed gives its batch back; what one delivered leaves the outbox
    # in its next claim's transaction.
    await box.release("r1")
    delivered = [e.id for e in second]
    again = {e.id for e in await box.claim("r3", limit=100_000, ttl=ttl, delivered=delivered)}
    assert again & ours == a
    assert not {e.id for e in await box.peek(limit=10_000)} & set(delivered)
    backlog = await box.backlog()
    assert backlog.events >= len(a) and backlog.oldest is not None
    # A relay that died never gives its batch back: the claim expires instead.
    await box.release("r3")
    held = {e.id for e in await box.claim("dead", limit=100_000, ttl=timedelta(milliseconds=100))}
    assert held & ours == a
    assert {e.id for e in await box.claim("r4", limit=100_000, ttl=ttl)} & ours == set()
    await asyncio.sleep(0.15)
    taken = {e.id for e in await box.claim("r4", limit=100_000, ttl=ttl)}
    assert taken & ours == a
    await box.release("r4", delivered=list(taken))  # or in the release of a stream that broke
    assert [e for e in await box.peek(limit=10_000) if e.tenant == t] == []


async def test_a_queued_run_says_so_in_the_outbox_before_any_event(run_db: Database) -> None:
    store = RunStore(run_db)
    t = tenant()
    queued, _, _ = await store.create(new_run(t))
    leased, _, _ = await store.create(new_run(t, queued=False), owner="a")
    again, _, created = await store.create(new_run(t, idempotency_key="k"))
    _, _, repeated = await store.create(new_run(t, idempotency_key="k"))
    assert created and not repeated
    rows = await outbox_of(run_db, t)
    assert sorted((e.run_id, e.kind, e.sequence, e.payload["agent"]) for e in rows) == sorted(
        (r.id, "run_queued", 0, f"tenants/{t}/agents/a") for r in (queued, again)
    ), "one record per queued run, none for a run created leased or found by its key"
    assert leased.id not in {e.run_id for e in rows}


def lost_call(step: int, cost: str) -> UnsettledModelCall:
    return UnsettledModelCall(
        {"step": step, "model": "m", "cost_usd": cost, "usage_estimated": True},
        {"step": step, "cost_usd": cost, "usage_estimated": True},
        "a",
        {"cost_usd": cost, "model_calls": step},
    )


async def test_a_model_call_lost_with_its_holder_is_settled_by_whoever_takes_the_run(
    run_db: Database,
) -> None:
    """Written before it is made, a model call whose result never came is billed at its
    worst case, marked estimated: by the next claim, by a dead letter, by a cancel of the
    run given back; a call whose result was written is not."""
    store = RunStore(run_db, lease_ttl=timedelta(milliseconds=150), max_attempts=3)
    t = tenant()
    run, lease, _ = await store.create(
        new_run(t, queued=False, model_call=lost_call(1, "0.5")), owner="a"
    )
    assert lease is not None and (await store.get(run.id)).model_call
    await asyncio.sleep(0.2)  # "a" dies mid-call
    got = await store.claim("b", run_id=run.id)
    assert got is not None
    lease_b, claimed = got
    assert claimed.usage == {"cost_usd": "0.5", "model_calls": 1} and not claimed.model_call
    settled = [e for e in await store.events(run.id) if e.type == "model_call_finished"]
    assert [e.payload["usage_estimated"] for e in settled] == [True]
    usage = [o for o in await outbox_of(run_db, t) if o.kind == "model_usage"]
    assert [(o.payload["cost_usd"], o.executor) for o in usage] == [("0.5", "a")]
    # "b" announces step 2's call with its checkpoint, gets the answer, records it.
    lease_b = await store.checkpoint(
        lease_b, step=1, delta={}, usage=claimed.usage, model_call=lost_call(2, "0.7")
    )
    assert (await store.get(run.id)).model_call
    lease_b = await store.checkpoint(lease_b, step=2, delta={}, usage={"cost_usd": "0.6"})
    assert not (await store.get(run.id)).model_call, "the result settles it"
    # Announced alone, then lost twice: the dead letter bills it.
    lease_b = await store.announce_model_call(lease_b, lost_call(3, "0.9"))
    await asyncio.sleep(0.2)
    lease_c = await store.claim("c", run_id=run.id)
    assert lease_c is not None
    await store.announce_model_call(lease_c[0], lost_call(4, "1.1"))
    await asyncio.sleep(0.2)
    assert await store.claim("d", run_id=run.id) is None
    final = await store.get(run.id)
    assert final.stop_reason is StopReason.DEAD_LETTERED and not final.model_call
    events = await store.events(run.id)
    estimated = [e.payload["step"] for e in events if e.payload.get("usage_estimated")]
    assert estimated == [1, 3, 4]
    assert events[-1].payload["usage"] == {"cost_usd": "1.1", "model_calls": 4}
    # A run given back mid-call and then cancelled in the queue: settled too.
    other, lease, _ = await store.create(
        new_run(t, queued=False, model_call=lost_call(1, "0.2")), owner="a"
    )
    assert lease is not None
    await store.hand_back(lease)
    await store.request_cancel(other.id)
    ended = await store.events(other.id)
    assert [e.type for e in ended][-2:] == ["model_call_finished", "run_stopped"]
    assert ended[-1].payload["usage"] == {"cost_usd": "0.2", "model_calls": 1}
    # A holder that finishes clears it (the loop settles what it cut off itself).
    third, lease, _ = await store.create(
        new_run(t, queued=False, model_call=lost_call(1, "0.2")), owner="a"
    )
    assert lease is not None
    await store.finish(lease, StopReason.FAILED, detail="model_error")
    assert not (await store.get(third.id)).model_call
