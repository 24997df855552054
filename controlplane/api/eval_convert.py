"""Eval suites and reports ⇄ protobuf."""

from __future__ import annotations

from controlplane.api import _convert
from controlplane.api._convert import _enum, _enum_map, _timestamp
from controlplane.evals.reports import CaseResult, Grade, Report
from controlplane.evals.service import report_name
from controlplane.registry import kinds, names
from controlplane.registry import resources as r
from pilothouse.v1 import eval_pb2 as pb

GRADERS = _enum_map(
    {
        pb.GRADER_UNSPECIFIED: r.Grader.UNSPECIFIED,
        pb.GRADER_EXACT: r.Grader.EXACT,
        pb.GRADER_CONTAINS: r.Grader.CONTAINS,
        pb.GRADER_REGEX: r.Grader.REGEX,
        pb.GRADER_JSON_SCHEMA: r.Grader.JSON_SCHEMA,
        pb.GRADER_MODEL_JUDGED: r.Grader.MODEL_JUDGED,
    }
)


def suite_from_proto(m: pb.EvalSuite) -> r.EvalSuite:
    return r.EvalSuite(
        agent=m.agent,
        cases=tuple(
            r.EvalCase(
                id=c.id,
                input=c.input,
                variables=dict(c.variables),
                expectations=tuple(
                    r.Expectation(
                        grader=_enum(
                            GRADERS, e.grader, f"eval_suite.cases[{i}].expectations[{j}].grader"
                        ),
                        value=e.value,
                        judge_agent=e.judge_agent,
                        rubric=e.rubric,
                    )
                    for j, e in enumerate(c.expectations)
                ),
            )
            for i, c in enumerate(m.cases)
        ),
    )


def suite_to_proto(record: r.Record[r.EvalSuite]) -> pb.EvalSuite:
    s = record.spec
    m = pb.EvalSuite(agent=s.agent)
    for case in s.cases:
        c = m.cases.add(id=case.id, input=case.input)
        c.variables.update(case.variables)
        for e in case.expectations:
            c.expectations.add(
                grader=GRADERS[1][e.grader],
                value=e.value,
                judge_agent=e.judge_agent,
                rubric=e.rubric,
            )
    _convert._meta(m, record, kinds.EVAL_SUITE)
    return m


def report_from_proto(m: pb.EvalReport) -> Report:
    """What a caller files: the suite, its etag, the version and the cases' grades."""
    return Report(
        id="",
        suite=m.suite,
        suite_etag=m.suite_etag,
        prompt_version=m.prompt_version,
        cases=tuple(
            CaseResult(
                case_id=c.case_id,
                run=c.run,
                stop_reason=c.stop_reason,
                cost_usd=c.cost_usd or "0",
                grades=tuple(
                    Grade(
                        grader=_enum(GRADERS, g.grader, f"report.cases[{i}].grades[{j}].grader"),
                        score=g.score,
                        detail=g.detail,
                        judge_run=g.judge_run,
                    )
                    for j, g in enumerate(c.grades)
                ),
            )
            for i, c in enumerate(m.cases)
        ),
    )


def report_to_proto(tenant_of_suite: str, report: Report) -> pb.EvalReport:
    m = pb.EvalReport(
        name=report_name(tenant_of_suite, report.id),
        suite=report.suite,
        suite_etag=report.suite_etag,
        prompt_version=report.prompt_version,
        score=report.score,
        passed_cases=report.passed_cases,
        total_cases=report.total_cases,
        actor=report.actor,
    )
    for case in report.cases:
        m.cases.append(case_to_proto(case))
    _timestamp(m.create_time, report.create_time)
    return m


def case_to_proto(case: CaseResult) -> pb.EvalCaseResult:
    m = pb.EvalCaseResult(
        case_id=case.case_id,
        run=case.run,
        stop_reason=case.stop_reason,
        score=case.score,
        cost_usd=case.cost_usd,
    )
    for g in case.grades:
        m.grades.add(
            grader=GRADERS[1][g.grader], score=g.score, detail=g.detail, judge_run=g.judge_run
        )
    return m


def tenant_of(report: Report) -> str:
    return names.parse_child(report.suite, kinds.EVAL_SUITE.collection, "suite").tenant
