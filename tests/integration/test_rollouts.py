"""Rollouts on a real control plane and executor: the resource's rules and transitions
(audited), the candidate's share reaching the executor, where each run is assigned by
the specified hash; a failing candidate rolled back by analysis while traffic flows; a
good one promoted through every step, sessions keeping their variant on the way."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2

from controlplane.rollouts.service import LEASE
from controlplane.store.database import open_database
from controlplane.store.schema import loop_leases, rollout_analyses
from pilothouse.assignment import Stickiness, in_candidate, unit_key
from pilothouse.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    prompt_pb2,
    rollout_pb2,
    rollout_pb2_grpc,
    run_pb2,
    telemetry_pb2,
    telemetry_pb2_grpc,
)
from tests import helpers as h
from tests.conftest import Live, start_live
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.integration.test_agent_runs import Stage, deploy, run_to_end, stage

Code = grpc.StatusCode
T = TypeVar("T")
CANDIDATE_TEMPLATE = "You are the new helper of {{customer}}."


def rollouts(live: Live) -> rollout_pb2_grpc.RolloutServiceStub:
    return rollout_pb2_grpc.RolloutServiceStub(live.channel)


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await check()
        if answer is not None:
            return answer
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.1)


async def prompt_with_candidate(live: Live, fake: FakeOpenAI) -> tuple[str, str, str]:
    """A tenant whose agent runs prompt p's production version on the fake model, and a
    second version of p; (tenant, baseline, candidate)."""
    tenant = await live.new_tenant("ro")
    await deploy(
        live,
        tenant,
        tools={},
        model=h.openai_model(fake.base_url),
        agent=h.agent(tenant, "p", []),
        model_id="m",
        prompt_id="p",
        agent_id="a",
    )
    prompt = await live.prompts.GetPrompt(
        prompt_pb2.GetPromptRequest(name=f"tenants/{tenant}/prompts/p"), metadata=live.md()
    )
    candidate = await live.prompts.CreatePromptVersion(
        prompt_pb2.CreatePromptVersionRequest(
            parent=f"tenants/{tenant}/prompts/p",
            prompt_version=h.version(tenant, "default", CANDIDATE_TEMPLATE),
        ),
        metadata=live.md(),
    )
    return tenant, prompt.prompt.labels["production"], candidate.prompt_version.name


def spec(tenant: str, candidate: str, *weights: int, **analysis: Any) -> rollout_pb2.Rollout:
    ro = rollout_pb2.Rollout(
        prompt=f"tenants/{tenant}/prompts/p",
        candidate_version=candidate,
        steps=[rollout_pb2.RolloutStep(weight_bps=w) for w in weights],
    )
    ro.analysis.interval.CopyFrom(duration_pb2.Duration(seconds=1))
    for field, value in analysis.items():
        if field == "checks":
            ro.analysis.checks.extend(value)
        else:
            setattr(ro.analysis, field, value)
    return ro


async def create(live: Live, tenant: str, rollout_id: str, ro: rollout_pb2.Rollout) -> Any:
    return await rollouts(live).CreateRollout(
        rollout_pb2.CreateRolloutRequest(
            parent=f"tenants/{tenant}", rollout_id=rollout_id, rollout=ro
        ),
        metadata=live.md(),
    )


async def state_of(live: Live, name: str) -> rollout_pb2.Rollout:
    got = await rollouts(live).GetRollout(
        rollout_pb2.GetRolloutRequest(name=name), metadata=live.md()
    )
    return got.rollout


async def reaches(live: Live, name: str, state: int, timeout: float = 30.0) -> rollout_pb2.Rollout:
    async def check() -> rollout_pb2.Rollout | None:
        ro = await state_of(live, name)
        return ro if ro.state == state else None

    return await eventually(check, timeout)


async def test_rollout_rules_and_transitions_are_audited(live: Live) -> None:
    fake = await FakeOpenAI().start()
    try:
        tenant, baseline, candidate = await prompt_with_candidate(live, fake)
    finally:
        await fake.aclose()
    bad = spec(tenant, "", 2500, 500)
    bad.analysis.checks.add(metric=rollout_pb2.ROLLOUT_METRIC_ERROR_RATE, threshold=2)
    error = await h.fails(create(live, tenant, "bad", bad), Code.INVALID_ARGUMENT)
    assert h.field_violations(error) == {
        "rollout.candidate_version": "is required (a version of the prompt)",
        "rollout.steps[1].weight_bps": "must be greater than the step before (2500)",
        "rollout.analysis.checks[0].threshold": "a error_rate is from 0 to 1",
    }
    wrong_baseline = spec(tenant, baseline, 500)
    wrong_baseline.baseline_version = candidate
    error = await h.fails(create(live, tenant, "wrong", wrong_baseline), Code.FAILED_PRECONDITION)
    assert [v.type for v in h.precondition_violations(error)] == ["BASELINE_NOT_PRODUCTION"]

    created = await create(live, tenant, "canary", spec(tenant, candidate, 500, 10_000))
    name = created.rollout.name
    assert name == f"tenants/{tenant}/rollouts/canary"
    assert created.rollout.baseline_version == baseline  # production's, filled in
    assert created.rollout.stickiness == rollout_pb2.STICKINESS_SESSION
    error = await h.fails(
        create(live, tenant, "second", spec(tenant, candidate, 500)), Code.FAILED_PRECONDITION
    )
    assert [v.type for v in h.precondition_violations(error)] == ["ROLLOUT_IN_PROGRESS"]
    error = await h.fails(
        live.prompts.SetPromptLabel(
            prompt_pb2.SetPromptLabelRequest(
                name=f"tenants/{tenant}/prompts/p", label="production", version=candidate
            ),
            metadata=live.md(),
        ),
        Code.FAILED_PRECONDITION,
    )
    assert [v.type for v in h.precondition_violations(error)] == ["ROLLOUT_IN_PROGRESS"]

    # The rollout loop starts it at its next tick.
    started = await reaches(live, name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)
    assert (started.step_index, started.weight_bps) == (0, 500)
    stub, md = rollouts(live), live.md()
    paused = await stub.PauseRollout(
        rollout_pb2.PauseRolloutRequest(name=name, reason="checking the dashboards"), metadata=md
    )
    assert paused.rollout.state == rollout_pb2.ROLLOUT_STATE_PAUSED
    assert paused.rollout.state_reason == "checking the dashboards"
    assert paused.rollout.weight_bps == 500  # held, not withdrawn
    resumed = await stub.ResumeRollout(rollout_pb2.ResumeRolloutRequest(name=name), metadata=md)
    assert resumed.rollout.state == rollout_pb2.ROLLOUT_STATE_PROGRESSING
    aborted = await stub.AbortRollout(
        rollout_pb2.AbortRolloutRequest(name=name, reason="wrong tone"), metadata=md
    )
    assert (aborted.rollout.state, aborted.rollout.weight_bps) == (
        rollout_pb2.ROLLOUT_STATE_ABORTED,
        0,
    )
    error = await h.fails(
        stub.PauseRollout(rollout_pb2.PauseRolloutRequest(name=name), metadata=md),
        Code.FAILED_PRECONDITION,
    )
    assert error.details() == f"{name} is aborted and cannot be paused"
    await h.fails(
        stub.GetRollout(
            rollout_pb2.GetRolloutRequest(name=f"tenants/{tenant}/rollouts/nope"), metadata=md
        ),
        Code.NOT_FOUND,
    )

    # Finished, it no longer holds the prompt: a new one may start, and promote.
    again = await create(live, tenant, "canary-2", spec(tenant, candidate, 500))
    promoted = await stub.PromoteRollout(
        rollout_pb2.PromoteRolloutRequest(name=again.rollout.name, reason="looks good"),
        metadata=md,
    )
    assert promoted.rollout.state == rollout_pb2.ROLLOUT_STATE_PROMOTED
    prompt = await live.prompts.GetPrompt(
        prompt_pb2.GetPromptRequest(name=f"tenants/{tenant}/prompts/p"), metadata=md
    )
    assert prompt.prompt.labels["production"] == candidate
    listed = await stub.ListRollouts(
        rollout_pb2.ListRolloutsRequest(parent=f"tenants/{tenant}"), metadata=md
    )
    assert [r.name for r in listed.rollouts] == [name, again.rollout.name]

    records = await audit_pb2_grpc.AuditServiceStub(live.channel).ListAuditRecords(
        audit_pb2.ListAuditRecordsRequest(
            parent=f"tenants/{tenant}", action_prefix="Rollout.", page_size=100
        ),
        metadata=md,
    )
    actions = [(r.action, r.resource) for r in records.records]
    assert actions[:5] == [
        ("Rollout.create", name),
        ("Rollout.start", name),
        ("Rollout.pause", name),
        ("Rollout.resume", name),
        ("Rollout.abort", name),
    ]
    assert actions[-1] == ("Rollout.promote", again.rollout.name)


def serve_variants(fake: FakeOpenAI, *, fail_every: int = 0) -> None:
    """The fake answers every run; with ``fail_every``, every n-th call on the candidate's
    prompt fails for good (HTTP 400), so that run fails."""
    calls = {"candidate": 0}

    def decide(body: dict[str, Any]) -> Behaviour:
        system = body["messages"][0]["content"]
        if system.startswith("You are the new helper"):
            calls["candidate"] += 1
            if fail_every and calls["candidate"] % fail_every == 0:
                return Behaviour(status=400)
        return Behaviour(content="done")

    fake.policy = decide


async def run_once(s: Stage, key: str, tenant: str, session: str) -> list[run_pb2.RunEvent]:
    return await run_to_end(
        s,
        key,
        run_pb2.RunAgentRequest(
            agent=f"tenants/{tenant}/agents/a",
            input="hello",
            variables={"customer": "Ada"},
            session_id=session,
        ),
    )


def some_in_candidate(rollout: str, tenant: str, count: int, weight: int) -> list[str]:
    """``count`` session ids of which at least two, and not all, run the candidate at
    ``weight``: with random tenants, twenty sessions at 20 % would otherwise all miss the
    candidate about once in ninety tests, and its analysis would wait for ever."""
    for first in range(0, 100 * count, count):
        names = [f"s-{n}" for n in range(first, first + count)]
        hits = sum(
            in_candidate(rollout, unit_key(Stickiness.SESSION, tenant=tenant, session=s), weight)
            for s in names
        )
        if 2 <= hits < count:
            return names
    raise AssertionError("no set of sessions splits at this weight")


@contextlib.asynccontextmanager
async def traffic(
    s: Stage, key: str, tenant: str, sessions: int | list[str]
) -> AsyncIterator[dict[str, str]]:
    """Runs flowing, round the sessions (``s-0``… when given a count), two at a time,
    until the block ends; yields each finished run's session by the run's name."""
    finished: dict[str, str] = {}
    names = [f"s-{n}" for n in range(sessions)] if isinstance(sessions, int) else sessions

    async def flow(offset: int) -> None:
        n = offset
        while True:
            session = names[n % len(names)]
            events = await run_once(s, key, tenant, session)
            finished[events[0].run] = session
            n += 2

    tasks = [asyncio.create_task(flow(i)) for i in range(2)]
    try:
        yield finished
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def summaries(live: Live, tenant: str) -> list[telemetry_pb2.RunSummary]:
    stub = telemetry_pb2_grpc.TelemetryServiceStub(live.channel)
    out: list[telemetry_pb2.RunSummary] = []
    token = ""
    while True:
        page = await stub.ListRunSummaries(
            telemetry_pb2.ListRunSummariesRequest(
                parent=f"tenants/{tenant}", page_size=1000, page_token=token
            ),
            metadata=live.md(),
        )
        out += page.runs
        token = page.next_page_token
        if not token:
            return out


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.aclose()


async def test_a_failing_candidate_is_rolled_back_within_an_interval(
    live: Live, own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    tenant, baseline, candidate = await prompt_with_candidate(live, fake)
    serve_variants(fake, fail_every=5)  # a fifth of the candidate's runs fail
    error_rate = rollout_pb2.RolloutCheck(
        metric=rollout_pb2.ROLLOUT_METRIC_ERROR_RATE, threshold=0.05
    )
    async with stage(live, own_run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        created = await create(
            live,
            tenant,
            "canary",
            spec(tenant, candidate, 5000, 10_000, min_sample_size=5, checks=[error_rate]),
        )
        name = created.rollout.name
        started = await reaches(live, name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)
        await s.settled()
        async with traffic(s, key, tenant, sessions=40) as sessions:
            aborted = await reaches(live, name, rollout_pb2.ROLLOUT_STATE_ABORTED)
        assert aborted.weight_bps == 0 and aborted.step_index == 0
        assert "error_rate" in aborted.state_reason and "above 0.05" in aborted.state_reason
        # Within one interval of the step's start once enough runs were in: the first
        # analysis with a full sample failed it.
        verdicts = aborted.last_analysis
        assert verdicts.verdict == rollout_pb2.VERDICT_FAILED
        candidate_numbers = {v.variant: v for v in verdicts.variants}["candidate"]
        assert candidate_numbers.runs >= 5 and candidate_numbers.error_rate > 0.05
        assert started.step_start_time.ToDatetime() <= verdicts.analysis_time.ToDatetime()

        # The abort reaches the executor: every new run gets production again.
        await s.settled()
        after = await run_once(s, key, tenant, "s-new")
        assert after[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        assert fake.requests[-1]["messages"][0]["content"] == "You help Ada."

        # Each run was assigned by the specified function, on its session.
        async def all_in() -> list[telemetry_pb2.RunSummary] | None:
            runs = await summaries(live, tenant)
            ended = [r for r in runs if r.state == run_pb2.RUN_STATE_FINISHED]
            return ended if len(ended) == len(runs) and runs else None

        ended = await eventually(all_in)
        assigned = [r for r in ended if r.variant]
        assert {r.variant for r in assigned} == {"baseline", "candidate"}
        for run in (r for r in assigned if r.name in sessions):
            assert run.prompt_version == (candidate if run.variant == "candidate" else baseline)
            key_ = unit_key(Stickiness.SESSION, tenant=tenant, session=sessions[run.name])
            assert (run.variant == "candidate") == in_candidate(name, key_, 5000), run.name


@pytest.mark.timeout(120)  # its wait for the promotion alone may take 60 s on a busy machine
async def test_a_good_candidate_is_promoted_through_every_step(
    live: Live, own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    tenant, _, candidate = await prompt_with_candidate(live, fake)
    serve_variants(fake)
    error_rate = rollout_pb2.RolloutCheck(
        metric=rollout_pb2.ROLLOUT_METRIC_ERROR_RATE, threshold=0.05
    )
    weights = (2000, 5000, 10_000)
    name = ""
    async with stage(live, own_run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        created = await create(
            live,
            tenant,
            "canary",
            spec(tenant, candidate, *weights, min_sample_size=3, checks=[error_rate]),
        )
        name = created.rollout.name
        seen_weights: list[int] = []
        chosen = some_in_candidate(name, tenant, 20, weights[0])
        async with traffic(s, key, tenant, chosen) as sessions:

            async def promoted() -> rollout_pb2.Rollout | None:
                ro = await state_of(live, name)
                if ro.weight_bps and (not seen_weights or seen_weights[-1] != ro.weight_bps):
                    seen_weights.append(ro.weight_bps)
                return ro if ro.state == rollout_pb2.ROLLOUT_STATE_PROMOTED else None

            done = await eventually(promoted, 60)
        assert done.state_reason.startswith("every step held")
        assert seen_weights[: len(weights) - 1] == list(weights[:-1])
        prompt = await live.prompts.GetPrompt(
            prompt_pb2.GetPromptRequest(name=f"tenants/{tenant}/prompts/p"), metadata=live.md()
        )
        assert prompt.prompt.labels["production"] == candidate

    # A session that ran the candidate at one step ran it at every later one, and its
    # variant is the one the specified function gives at one of the steps' weights.
    journeys: dict[str, list[str]] = {}
    for run in sorted(await summaries(live, tenant), key=lambda r: r.create_time.ToDatetime()):
        if run.variant and run.name in sessions:
            journeys.setdefault(sessions[run.name], []).append(run.variant)
    assert len(journeys) == 20
    moved = 0
    for session, journey in journeys.items():
        assert journey == sorted(journey, key=lambda v: v == "candidate"), (session, journey)
        moved += journey[0] != journey[-1]
        key_ = unit_key(Stickiness.SESSION, tenant=tenant, session=session)
        possible = {in_candidate(name, key_, w) for w in (0, *weights)}
        assert {v == "candidate" for v in journey} <= possible
    assert moved > 0  # some went from the baseline to the candidate as the weight grew


async def test_the_cli_starts_shows_and_ends_a_rollout(live: Live, fake: FakeOpenAI) -> None:
    from tests.integration.test_cli import cli

    tenant, baseline, candidate = await prompt_with_candidate(live, fake)
    version = candidate.rsplit("/", 1)[-1]
    started = await cli(
        live,
        "rollout",
        "start",
        "canary",
        "--tenant",
        tenant,
        "--prompt",
        "p",
        "--candidate",
        version,
        "--steps",
        "5,50,100",
        "--interval",
        "1s",
        "--max-error-rate",
        "0.05",
        "--max-cost-ratio",
        "1.2",
    )
    assert started.code == 0, started.err
    assert f"Rollout tenants/{tenant}/rollouts/canary" in started.out
    assert f"{baseline.rsplit('/', 1)[-1]} (baseline) → {version} (candidate)" in started.out
    name = f"tenants/{tenant}/rollouts/canary"
    ro = await reaches(live, name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)
    assert [s.weight_bps for s in ro.steps] == [500, 5000, 10_000]
    assert {c.metric: c for c in ro.analysis.checks}[
        rollout_pb2.ROLLOUT_METRIC_COST_PER_RUN
    ].baseline_ratio == 1.2

    async def analysed() -> rollout_pb2.Rollout | None:
        got = await state_of(live, name)
        return got if got.HasField("last_analysis") else None

    await eventually(analysed, 15)
    status = await cli(live, "rollout", "status", "canary", "--tenant", tenant)
    assert status.code == 0, status.err
    assert "state  progressing: started" in status.out
    assert "steps  [5%] → 50% → 100%" in status.out
    assert "last analysis" in status.out and ": hold" in status.out
    assert "error rate" in status.out and "≤ 0.05" in status.out
    assert "≤ 1.2× baseline" in status.out
    as_json = await cli(live, "rollout", "status", name, "-o", "json")
    assert '"state": "ROLLOUT_STATE_PROGRESSING"' in as_json.out

    aborted = await cli(live, "rollout", "abort", name, "--reason", "not today")
    assert aborted.code == 0, aborted.err
    assert "state  aborted: not today" in aborted.out
    again = await cli(live, "rollout", "pause", name)
    assert again.code != 0
    assert "is aborted and cannot be paused" in again.err
    watched = await cli(live, "rollout", "watch", name)  # finished: one view, then it ends
    assert watched.code == 0 and watched.out.count("Rollout tenants/") == 1


async def test_with_two_replicas_one_analyses_and_the_other_takes_over(
    own_run_database_url: str, fake: FakeOpenAI
) -> None:
    """Two control planes on one database: while the first holds the rollout-analysis
    lease the second never analyses (the analyses stay an interval apart); once the first
    stops, the second takes the lease and the analyses go on."""
    url = own_run_database_url  # a database of this test alone, for both replicas
    first: Live | None = await start_live(url, rollout_tick=0.2)
    assert first is not None
    db = open_database(url)

    async def holder() -> str | None:
        async with db.snapshot() as conn:
            held = await conn.execute(
                sa.select(loop_leases.c.holder).where(loop_leases.c.name == LEASE)
            )
            return held.scalar_one_or_none()

    async def analysis_times() -> list[datetime]:
        async with db.snapshot() as conn:
            rows = await conn.execute(
                sa.select(rollout_analyses.c.analysis_time).order_by(
                    rollout_analyses.c.analysis_time
                )
            )
            return [t for (t,) in rows]

    second: Live | None = None
    try:
        first_holder = await eventually(holder)
        second = await start_live(url, rollout_tick=0.2, bootstrap_key=first.admin_key)
        tenant, _, candidate = await prompt_with_candidate(first, fake)
        # No traffic: every analysis is inconclusive and the rollout holds its step.
        checks = [
            rollout_pb2.RolloutCheck(metric=rollout_pb2.ROLLOUT_METRIC_ERROR_RATE, threshold=0.1)
        ]
        created = await create(
            second, tenant, "canary", spec(tenant, candidate, 5000, checks=checks)
        )
        await reaches(second, created.rollout.name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)

        async def analysed(n: int) -> list[datetime] | None:
            times = await analysis_times()
            return times if len(times) >= n else None

        before = await eventually(lambda: analysed(4))
        assert await holder() == first_holder
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(before)]
        assert min(gaps) >= 0.95, gaps  # one analyst, once an interval (1 s)

        stopping, first = first, None
        await stopping.channel.close()
        await stopping.plane.aclose()  # gives the lease back
        second_holder = await eventually(holder)
        assert second_holder != first_holder
        after = await eventually(lambda: analysed(len(before) + 3))
        assert after[: len(before)] == before
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(after)]
        assert min(gaps) >= 0.95, gaps
        ro = await state_of(second, created.rollout.name)
        assert ro.state == rollout_pb2.ROLLOUT_STATE_PROGRESSING
        assert ro.last_analysis.verdict == rollout_pb2.VERDICT_INCONCLUSIVE
    finally:
        for plane in (first, second):
            if plane is not None:
                await plane.channel.close()
                await plane.plane.aclose()
        await db.aclose()


async def test_sessionless_runs_split_by_the_weight(
    live: Live, own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    """Runs with neither a session nor a user id are each a unit of their own: at 50 %
    about half of them run the candidate (within binomial bounds), not all the baseline
    as one tenant-wide unit would."""
    tenant, baseline, candidate = await prompt_with_candidate(live, fake)
    serve_variants(fake)
    runs = 300
    async with stage(live, own_run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        # Held at 50 %: its analysis never has the samples to move on.
        error_rate = rollout_pb2.RolloutCheck(
            metric=rollout_pb2.ROLLOUT_METRIC_ERROR_RATE, threshold=0.05
        )
        created = await create(
            live,
            tenant,
            "split",
            spec(tenant, candidate, 5000, 10_000, min_sample_size=10_000, checks=[error_rate]),
        )
        await reaches(live, created.rollout.name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)
        await s.settled()
        versions: list[str] = []

        async def flow(n: int) -> None:
            for _ in range(n):
                events = await run_once(s, key, tenant, session="")
                versions.append(events[0].run_started.prompt_version)

        await asyncio.gather(*(flow(runs // 4) for _ in range(4)))
    assert set(versions) == {baseline, candidate}
    # Binomial(300, 0.5): mean 150, standard deviation 8.7; four of them either way.
    on_candidate = versions.count(candidate)
    assert 115 <= on_candidate <= 185, on_candidate


async def test_a_ratio_check_at_the_full_step_compares_with_the_earlier_baseline(
    live: Live, own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    """At 100 % the baseline gets no runs: a cost ratio check there compares with the
    baseline's runs of the earlier steps and the rollout is promoted, where it used to
    hold for ever. A rollout whose only step is 100 % cannot have such a check."""
    tenant, _, candidate = await prompt_with_candidate(live, fake)
    serve_variants(fake)
    cost_ratio = rollout_pb2.RolloutCheck(
        metric=rollout_pb2.ROLLOUT_METRIC_COST_PER_RUN, baseline_ratio=3.0
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(live, tenant, "never", spec(tenant, candidate, 10_000, checks=[cost_ratio]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "analysis.checks[0].baseline_ratio" in str(refused.value.details())
    async with stage(live, own_run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        created = await create(
            live,
            tenant,
            "canary",
            spec(tenant, candidate, 5000, 10_000, min_sample_size=3, checks=[cost_ratio]),
        )
        await reaches(live, created.rollout.name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)
        await s.settled()
        async with traffic(s, key, tenant, sessions=20):
            done = await reaches(live, created.rollout.name, rollout_pb2.ROLLOUT_STATE_PROMOTED, 60)
    numbers = {v.variant: v for v in done.last_analysis.variants}
    assert done.step_index == 1 and numbers["baseline"].runs >= 3, "the earlier steps' runs"


async def test_a_candidate_failing_every_run_is_stopped_after_a_few(
    live: Live, own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    tenant, _, candidate = await prompt_with_candidate(live, fake)
    serve_variants(fake, fail_every=1)
    error_rate = rollout_pb2.RolloutCheck(
        metric=rollout_pb2.ROLLOUT_METRIC_ERROR_RATE, threshold=0.05
    )
    async with stage(live, own_run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        created = await create(
            live,
            tenant,
            "canary",
            # The error rate alone would wait for a thousand runs of each variant.
            spec(tenant, candidate, 5000, 10_000, min_sample_size=1000, checks=[error_rate]),
        )
        await reaches(live, created.rollout.name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)
        await s.settled()
        async with traffic(s, key, tenant, sessions=40):
            aborted = await reaches(live, created.rollout.name, rollout_pb2.ROLLOUT_STATE_ABORTED)
    assert "in a row failed" in aborted.state_reason, aborted.state_reason
    numbers = {v.variant: v for v in aborted.last_analysis.variants}
    assert 3 <= numbers["candidate"].runs < 1000, "stopped before the sample was full"
