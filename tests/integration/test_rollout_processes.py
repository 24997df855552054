"""Rollouts with every server in its own process: a control plane (`controlplane serve`)
and two executors (`dataplane serve`), with traffic spread over both executors. A
candidate that fails a fifth of its runs is rolled back by analysis while traffic flows;
a good one is promoted through every step, each session keeping its variant on both
executors and never leaving the candidate once on it; one whose eval suite fails gets
no traffic at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controlplane import launch
from controlplane.auth import keys
from pilothouse.assignment import Stickiness, in_candidate, unit_key
from pilothouse.v1 import api_key_pb2, prompt_pb2, rollout_pb2, run_pb2, run_pb2_grpc
from tests.conftest import Live
from tests.executors import Executor, start_executor
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.test_cli import cli
from tests.integration.test_evals import answers, create_suite, judge_agent
from tests.integration.test_rollouts import (
    create,
    eventually,
    prompt_with_candidate,
    serve_variants,
    some_in_candidate,
    spec,
    state_of,
    summaries,
)

ERROR_RATE = rollout_pb2.RolloutCheck(metric=rollout_pb2.ROLLOUT_METRIC_ERROR_RATE, threshold=0.05)


@dataclass
class Pool:
    live: Live
    executors: list[run_pb2_grpc.AgentServiceStub]
    addresses: list[str]

    async def run(self, key: str, tenant: str, session: str, on: int) -> list[run_pb2.RunEvent]:
        """A run of session ``session`` on executor ``on`` (modulo the pool)."""
        stub = self.executors[on % len(self.executors)]
        call = stub.RunAgent(
            run_pb2.RunAgentRequest(
                agent=f"tenants/{tenant}/agents/a",
                input="hello",
                variables={"customer": "Ada"},
                session_id=session,
            ),
            metadata=(("authorization", f"Bearer {key}"),),
        )
        return [response.event async for response in call]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.aclose()


@contextlib.asynccontextmanager
async def processes(database_url: str, tmp_path: Path) -> AsyncIterator[Pool]:
    admin = keys.generate().token
    plane = await asyncio.to_thread(launch.start, database_url, bootstrap_key=admin)
    channel = grpc.aio.insecure_channel(plane.address)
    live = Live(plane, channel, admin)  # type: ignore[arg-type]  # a child, not in-process
    children: list[Executor] = []
    channels: list[grpc.aio.Channel] = [channel]
    try:
        key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
        stubs = []
        addresses = []
        for n in range(2):
            proc = await start_executor(
                plane.address,
                key,
                node=f"proc-{n}-{os.urandom(2).hex()}",
                state_dir=tmp_path / f"executor-{n}",
                run_store_url=f"sqlite:///{tmp_path / f'runs-{n}.db'}",
            )
            children.append(proc)
            addresses.append(proc.address)
            channels.append(grpc.aio.insecure_channel(proc.address))
            stubs.append(run_pb2_grpc.AgentServiceStub(channels[-1]))
        yield Pool(live, stubs, addresses)
    finally:
        for proc in children:
            proc.terminate()
        for proc in children:
            await proc.exited(30)
        for open_channel in channels:
            await open_channel.close()
        await asyncio.to_thread(plane.stop)
        if plane.process.stderr is not None:
            plane.process.stderr.close()


async def ready(pool: Pool, tenant: str, role: int = api_key_pb2.ROLE_CLIENT) -> str:
    """A key of ``tenant`` (a client's unless ``role`` says otherwise) once both
    executors take it."""
    key = await pool.live.new_key(role, tenant)
    for on in range(len(pool.executors)):

        async def admitted(on: int = on) -> bool | None:
            try:
                events = await pool.run(key, tenant, "warm-up", on)
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                    return None
                raise
            return events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED or None

        await eventually(admitted)
    return key


@contextlib.asynccontextmanager
async def traffic(
    pool: Pool, key: str, tenant: str, sessions: int | list[str]
) -> AsyncIterator[dict[str, tuple[str, int]]]:
    """Runs flowing until the block ends, two at a time, round the sessions (``s-0``…
    when given a count) and the executors (a session's runs land on both); yields each
    finished run's session and executor by the run's name."""
    finished: dict[str, tuple[str, int]] = {}
    names = [f"s-{n}" for n in range(sessions)] if isinstance(sessions, int) else sessions

    async def flow(offset: int) -> None:
        n = offset
        while True:
            session, on = names[n % len(names)], n // len(names)
            events = await pool.run(key, tenant, session, on)
            finished[events[0].run] = (session, on % len(pool.executors))
            n += 2

    tasks = [asyncio.create_task(flow(i)) for i in range(2)]
    try:
        yield finished
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_failing_candidate_is_rolled_back_across_processes(
    own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    async with processes(own_run_database_url, tmp_path) as pool:
        live = pool.live
        tenant, baseline, candidate = await prompt_with_candidate(live, fake)
        serve_variants(fake, fail_every=5)
        key = await ready(pool, tenant)
        created = await create(
            live,
            tenant,
            "canary",
            spec(tenant, candidate, 5000, 10_000, min_sample_size=5, checks=[ERROR_RATE]),
        )
        name = created.rollout.name
        async with traffic(pool, key, tenant, sessions=30):

            async def aborted() -> rollout_pb2.Rollout | None:
                ro = await state_of(live, name)
                return ro if ro.state == rollout_pb2.ROLLOUT_STATE_ABORTED else None

            done = await eventually(aborted, 60)
        assert done.weight_bps == 0 and "error_rate" in done.state_reason
        # The failing analysis was the first with a full sample: within one interval.
        assert (
            done.failed_analyses == 1 and done.last_analysis.verdict == rollout_pb2.VERDICT_FAILED
        )
        numbers = {v.variant: v for v in done.last_analysis.variants}
        assert numbers["candidate"].runs >= 5 and numbers["candidate"].error_rate > 0.05

        # The abort reaches both executors: new sessions all run production again.
        async def everywhere_baseline() -> bool | None:
            for on in range(len(pool.executors)):
                for n in range(4):
                    events = await pool.run(key, tenant, f"after-{on}-{n}", on)
                    if fake.requests[-1]["messages"][0]["content"] != "You help Ada.":
                        return None
                    assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            return True

        await eventually(everywhere_baseline, 10)
        prompt = await live.prompts.GetPrompt(
            prompt_pb2.GetPromptRequest(name=f"tenants/{tenant}/prompts/p"), metadata=live.md()
        )
        assert prompt.prompt.labels["production"] == baseline


async def test_a_good_candidate_is_promoted_and_sessions_keep_their_variant_across_executors(
    own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    weights = (2000, 5000, 10_000)
    async with processes(own_run_database_url, tmp_path) as pool:
        live = pool.live
        tenant, _, candidate = await prompt_with_candidate(live, fake)
        serve_variants(fake)
        key = await ready(pool, tenant)
        created = await create(
            live,
            tenant,
            "canary",
            spec(tenant, candidate, *weights, min_sample_size=3, checks=[ERROR_RATE]),
        )
        name = created.rollout.name
        sessions = some_in_candidate(name, tenant, 12, weights[0])
        async with traffic(pool, key, tenant, sessions) as finished:

            async def promoted() -> rollout_pb2.Rollout | None:
                ro = await state_of(live, name)
                return ro if ro.state == rollout_pb2.ROLLOUT_STATE_PROMOTED else None

            await eventually(promoted, 90)

        async def indexed() -> list[object] | None:
            runs = [r for r in await summaries(live, tenant) if r.name in finished]
            return runs if len(runs) == len(finished) else None

        runs = await eventually(indexed)
    # Per session, in time order: (variant, executor) of each run that had one.
    journeys: dict[str, list[tuple[str, int]]] = {}
    for run in sorted(runs, key=lambda r: r.create_time.ToDatetime()):  # type: ignore[attr-defined]
        session, on = finished[run.name]  # type: ignore[attr-defined]
        if run.variant:  # type: ignore[attr-defined]
            journeys.setdefault(session, []).append((run.variant, on))  # type: ignore[attr-defined]
    assert len(journeys) == 12
    on_both = 0
    for session, journey in journeys.items():
        variants = [v for v, _ in journey]
        # Never back from the candidate to the baseline as the weight grows.
        assert variants == sorted(variants, key=lambda v: v == "candidate"), (session, journey)
        # Executors that disagreed on a session at one weight would show in the journey,
        # which alternates between them, as a step back; and each variant is the one the
        # specified function gives at one of the steps' weights.
        unit = unit_key(Stickiness.SESSION, tenant=tenant, session=session)
        assert {v == "candidate" for v in variants} <= {
            in_candidate(name, unit, w) for w in (0, *weights)
        }
        on_both += len({on for _, on in journey}) == 2
    assert on_both >= 6  # most sessions ran on both executors


async def test_a_rollout_whose_candidate_fails_its_eval_gets_no_traffic(
    own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    async with processes(own_run_database_url, tmp_path) as pool:
        live = pool.live
        tenant, baseline, candidate = await prompt_with_candidate(live, fake)
        suite = await create_suite(live, tenant, await judge_agent(live, tenant))
        answers(fake, candidate="I think it is 41")
        ro = spec(tenant, candidate, 5000, checks=[ERROR_RATE])
        ro.eval_gate.suite = suite.name
        ro.eval_gate.min_score = 0.8
        name = (await create(live, tenant, "gated", ro)).rollout.name
        key = await ready(pool, tenant)
        operator = await ready(pool, tenant, api_key_pb2.ROLE_OPERATOR)

        async def evaluated() -> object | None:
            ran = await cli(
                live,
                "eval",
                "run",
                "--suite",
                "basics",
                "--prompt-version",
                candidate,
                "--executor",
                pool.addresses[0],
                "--tenant",
                tenant,
                key=operator,
            )
            # Until the executor has the pending rollout's candidate, it refuses it.
            return ran if ran.code == 0 else None

        ran = await eventually(evaluated)
        assert "0 of 2 cases passed" in ran.out  # type: ignore[attr-defined]

        async def held() -> rollout_pb2.Rollout | None:
            got = await state_of(live, name)
            return got if "below 0.8" in got.state_reason else None

        await eventually(held)
        async with traffic(pool, key, tenant, sessions=20) as finished:
            await asyncio.sleep(3)
        got = await state_of(live, name)
        assert got.state == rollout_pb2.ROLLOUT_STATE_PENDING and got.weight_bps == 0

        async def indexed() -> list[object] | None:
            runs = [r for r in await summaries(live, tenant) if r.name in finished]
            return runs if len(runs) == len(finished) else None

        runs = await eventually(indexed)
    assert len(runs) >= 10
    for run in runs:
        assert run.variant == "" and run.prompt_version == baseline  # type: ignore[attr-defined]
