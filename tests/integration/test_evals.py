"""Eval suites on a real control plane and executor: a suite's rules, a suite run through
the CLI (a process of its own) case by case on the executor, graded by every grader (the
model-judged one by a judge agent's run), its report filed; a rollout whose eval gate
the candidate has not passed stays pending and gets no traffic, and starts once a
passing report is filed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pilothouse.v1 import (
    agent_pb2,
    api_key_pb2,
    eval_pb2,
    eval_pb2_grpc,
    prompt_pb2,
    rollout_pb2,
    run_pb2,
)
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.integration.test_agent_runs import stage
from tests.integration.test_cli import cli
from tests.integration.test_rollouts import (
    create,
    eventually,
    prompt_with_candidate,
    run_once,
    spec,
    state_of,
    summaries,
)

Code = grpc.StatusCode
GOOD = '{"answer": 42, "status": "ok"}'
JUDGE_TEMPLATE = "You are a strict grader."


def evals(live: Live) -> eval_pb2_grpc.EvalServiceStub:
    return eval_pb2_grpc.EvalServiceStub(live.channel)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.aclose()


def answers(fake: FakeOpenAI, *, candidate: str) -> None:
    """Production answers "I cannot say", the candidate ``candidate``; the judge scores
    an answer holding 42 at 0.9 and any other at 0.1."""

    def decide(body: dict[str, Any]) -> Behaviour:
        system = body["messages"][0]["content"]
        if system == JUDGE_TEMPLATE:
            asked = json.loads(body["messages"][-1]["content"])
            good = "42" in asked["answer"]
            return Behaviour(
                content=json.dumps({"score": 0.9 if good else 0.1, "reason": "checked"})
            )
        if system.startswith("You are the new helper"):
            return Behaviour(content=candidate)
        return Behaviour(content="I cannot say")

    fake.policy = decide


async def judge_agent(live: Live, tenant: str) -> str:
    parent = f"tenants/{tenant}"
    md = live.md()
    await live.prompts.CreatePrompt(
        prompt_pb2.CreatePromptRequest(
            parent=parent, prompt_id="judge", prompt=prompt_pb2.Prompt()
        ),
        metadata=md,
    )
    version = await live.prompts.CreatePromptVersion(
        prompt_pb2.CreatePromptVersionRequest(
            parent=f"{parent}/prompts/judge",
            prompt_version=prompt_pb2.PromptVersion(
                template=JUDGE_TEMPLATE, model_route=f"{parent}/modelRoutes/default"
            ),
        ),
        metadata=md,
    )
    await live.prompts.SetPromptLabel(
        prompt_pb2.SetPromptLabelRequest(
            name=f"{parent}/prompts/judge", label="production", version=version.prompt_version.name
        ),
        metadata=md,
    )
    await live.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            parent=parent, agent_id="judge", agent=h.agent(tenant, "judge", [])
        ),
        metadata=md,
    )
    return f"{parent}/agents/judge"


def suite(tenant: str, judge: str) -> eval_pb2.EvalSuite:
    schema = {
        "type": "object",
        "required": ["answer"],
        "properties": {"answer": {"type": "integer"}},
    }
    g = eval_pb2
    return g.EvalSuite(
        agent=f"tenants/{tenant}/agents/a",
        cases=[
            g.EvalCase(
                id="six-times-seven",
                input="what is six times seven?",
                variables={"customer": "Ada"},
                expectations=[
                    g.Expectation(grader=g.GRADER_CONTAINS, value="42"),
                    g.Expectation(grader=g.GRADER_REGEX, value=r'"status":\s*"ok"'),
                    g.Expectation(grader=g.GRADER_JSON_SCHEMA, value=json.dumps(schema)),
                    g.Expectation(
                        grader=g.GRADER_MODEL_JUDGED, judge_agent=judge, rubric="The answer is 42."
                    ),
                ],
            ),
            g.EvalCase(
                id="exact",
                input="answer in JSON",
                variables={"customer": "Bo"},
                expectations=[g.Expectation(grader=g.GRADER_EXACT, value=GOOD)],
            ),
        ],
    )


async def create_suite(live: Live, tenant: str, judge: str) -> eval_pb2.EvalSuite:
    made = await evals(live).CreateEvalSuite(
        eval_pb2.CreateEvalSuiteRequest(
            parent=f"tenants/{tenant}", eval_suite_id="basics", eval_suite=suite(tenant, judge)
        ),
        metadata=live.md(),
    )
    return made.eval_suite


async def test_a_suite_is_checked_field_by_field(live: Live) -> None:
    tenant = await live.new_tenant("ev")
    bad = eval_pb2.EvalSuite(
        agent=f"tenants/{tenant}/agents/a",
        cases=[
            eval_pb2.EvalCase(
                id="one",
                input="x",
                expectations=[
                    eval_pb2.Expectation(grader=eval_pb2.GRADER_REGEX, value="(unclosed"),
                    eval_pb2.Expectation(grader=eval_pb2.GRADER_JSON_SCHEMA, value="{not json"),
                    eval_pb2.Expectation(grader=eval_pb2.GRADER_MODEL_JUDGED),
                    eval_pb2.Expectation(grader=eval_pb2.GRADER_EXACT),
                ],
            ),
            eval_pb2.EvalCase(id="one", input=" "),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await evals(live).CreateEvalSuite(
            eval_pb2.CreateEvalSuiteRequest(
                parent=f"tenants/{tenant}", eval_suite_id="s", eval_suite=bad
            ),
            metadata=live.md(),
        )
    assert refused.value.code() == Code.INVALID_ARGUMENT
    fields = set(h.field_violations(refused.value))
    prefix = "eval_suite.cases"
    assert {
        f"{prefix}[0].expectations[0].value",
        f"{prefix}[0].expectations[1].value",
        f"{prefix}[0].expectations[2].judge_agent",
        f"{prefix}[0].expectations[2].rubric",
        f"{prefix}[0].expectations[3].value",
        f"{prefix}[1].input",
        f"{prefix}[1].expectations",
        "eval_suite.cases.id[1]",
    } <= fields, fields


async def test_eval_run_grades_cases_and_a_gate_holds_the_rollout_until_a_passing_report(
    live: Live, own_run_database_url: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    tenant, baseline, candidate = await prompt_with_candidate(live, fake)
    judge = await judge_agent(live, tenant)
    suite_name = (await create_suite(live, tenant, judge)).name
    answers(fake, candidate="I think it is 41")  # the candidate is wrong at first
    ro = spec(tenant, candidate, 5000)
    ro.eval_gate.suite = suite_name
    ro.eval_gate.min_score = 0.8
    ro.eval_gate.max_regression = 0.1
    created = await create(live, tenant, "gated", ro)
    name = created.rollout.name

    async def waiting(why: str) -> rollout_pb2.Rollout | None:
        got = await state_of(live, name)
        return got if why in got.state_reason else None

    held = await eventually(lambda: waiting("no report of"))
    assert held.state == rollout_pb2.ROLLOUT_STATE_PENDING and held.weight_bps == 0

    async with stage(live, own_run_database_url, tmp_path) as s:
        operator = await s.client_key(tenant, api_key_pb2.ROLE_OPERATOR)
        await s.settled()  # the pending rollout names the candidate: executors have it
        common = ("--executor", s.executor.address, "--tenant", tenant)

        async def eval_run(version: str, *extra: str) -> Any:
            return await cli(
                live,
                "eval",
                "run",
                "--suite",
                "basics",
                "--prompt-version",
                version.rsplit("/", 1)[-1],
                *extra,
                *common,
                key=operator,
            )

        on_baseline = await eval_run(baseline, "-o", "json", "--min-score", "0.8")
        assert on_baseline.code == 1, on_baseline.err  # below --min-score
        base = json.loads(on_baseline.out)
        cases = {c["case_id"]: c for c in base["cases"]}
        assert base["total_cases"] == 2 and base.get("passed_cases", 0) == 0
        judged = cases["six-times-seven"]["grades"][3]
        assert judged["detail"] == "judge: checked" and judged["judge_run"]
        assert base["score"] == pytest.approx((0.1 / 4) / 2)

        wrong = await eval_run(candidate)
        assert wrong.code == 0, wrong.err
        assert "0 of 2 cases passed" in wrong.out
        held = await eventually(lambda: waiting("below 0.8"))
        assert held.state == rollout_pb2.ROLLOUT_STATE_PENDING and held.weight_bps == 0

        # Held back, the candidate gets no traffic.
        client = await s.client_key(tenant)
        for n in range(6):
            events = await run_once(s, client, tenant, f"s-{n}")
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            assert fake.requests[-1]["messages"][0]["content"].startswith("You help")

        answers(fake, candidate=GOOD)
        good = await eval_run(candidate, "-o", "json")
        assert good.code == 0, good.err
        report = json.loads(good.out)
        assert report["passed_cases"] == 2
        assert report["score"] == pytest.approx((3 + 0.9) / 4 / 2 + 0.5)
        started = await eventually(
            lambda: _in_state(live, name, rollout_pb2.ROLLOUT_STATE_PROGRESSING)
        )
        assert started.weight_bps == 5000

        listed = await cli(live, "eval", "report", "--suite", "basics", *common, key=operator)
        assert listed.code == 0 and len(listed.out.strip().splitlines()) == 4  # header + 3
        shown = await cli(live, "eval", "report", report["name"], *common, key=operator)
        assert "2 of 2 cases passed" in shown.out and "six-times-seven" in shown.out

        # The cases ran as ordinary runs on the version under test, on the variant eval,
        # which rollout analysis passes over.
        # So are the judge's runs, on the judge's own version.
        runs = {c["run"] for c in report["cases"]}
        judges = {g["judge_run"] for c in report["cases"] for g in c["grades"] if "judge_run" in g}
        assert len(judges) == 1

        async def indexed() -> list[Any] | None:
            found = [r for r in await summaries(live, tenant) if r.name in runs | judges]
            return found if len(found) == len(runs | judges) else None

        for summary in await eventually(indexed):
            assert summary.variant == "eval"
            assert (summary.prompt_version == candidate) == (summary.name in runs)

        # Running a case again for the same report reuses its run.
        again = await s.agents.RunEvalCase(
            run_pb2.RunEvalCaseRequest(
                agent=f"tenants/{tenant}/agents/a",
                prompt_version=candidate,
                report_id=report["name"].rsplit("/", 1)[-1],
                case=suite(tenant, judge).cases[1],
            ),
            metadata=(("authorization", f"Bearer {operator}"),),
        )
        assert again.result.run == {c["case_id"]: c for c in report["cases"]}["exact"]["run"]

        # A version the executor was not given is refused, naming the field.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await s.agents.RunEvalCase(
                run_pb2.RunEvalCaseRequest(
                    agent=f"tenants/{tenant}/agents/a",
                    prompt_version=f"tenants/{tenant}/prompts/p/versions/0000000000000000",
                    report_id="r1",
                    case=suite(tenant, judge).cases[1],
                ),
                metadata=(("authorization", f"Bearer {operator}"),),
            )
        assert refused.value.code() == Code.INVALID_ARGUMENT
        assert "prompt_version" in (refused.value.details() or "")


async def _in_state(live: Live, name: str, state: int) -> rollout_pb2.Rollout | None:
    got = await state_of(live, name)
    return got if got.state == state else None


async def test_a_report_must_cover_the_suite_as_it_is(live: Live, fake: FakeOpenAI) -> None:
    tenant, baseline, _ = await prompt_with_candidate(live, fake)
    judge = await judge_agent(live, tenant)
    made = await create_suite(live, tenant, judge)
    stale = eval_pb2.EvalReport(
        suite=made.name,
        suite_etag="not-the-etag",
        prompt_version=baseline,
        cases=[
            eval_pb2.EvalCaseResult(
                case_id="exact",
                run=f"tenants/{tenant}/runs/x",
                stop_reason="completed",
                grades=[eval_pb2.GradeResult(grader=eval_pb2.GRADER_EXACT, score=1.5)],
            ),
            eval_pb2.EvalCaseResult(case_id="unknown", grades=[]),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await evals(live).CreateEvalReport(
            eval_pb2.CreateEvalReportRequest(
                parent=f"tenants/{tenant}", report_id="r1", report=stale
            ),
            metadata=live.md(),
        )
    assert refused.value.code() == Code.INVALID_ARGUMENT
    fields = set(h.field_violations(refused.value))
    assert {
        "report.suite_etag",
        "report.cases[0].grades[0].score",
        "report.cases[1].case_id",
        "report.cases",
    } <= fields, fields
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await evals(live).GetEvalReport(
            eval_pb2.GetEvalReportRequest(name=f"tenants/{tenant}/evalReports/r1"),
            metadata=live.md(),
        )
    assert missing.value.code() == Code.NOT_FOUND
