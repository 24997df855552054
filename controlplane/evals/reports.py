"""An eval report: what a run of a suite on one prompt version scored.

Executors grade each case (``AgentService.RunEvalCase``); the report filed here must
hold one result per case of the suite as it is now, with one grade per expectation, by
that expectation's grader. The scores are computed here: a case's is the mean of its
grades, the report's the mean of its cases'. A grade passes at ``PASS_SCORE`` or more; a
case passes when all its grades do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation

from controlplane.errors import FieldViolation, InvalidArgument
from controlplane.registry import resources as r

PASS_SCORE = 0.5
MAX_DETAIL = 1000


@dataclass(frozen=True)
class Grade:
    grader: r.Grader
    score: float
    detail: str = ""
    judge_run: str = ""


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    run: str
    stop_reason: str
    grades: tuple[Grade, ...]
    cost_usd: str = "0"
    score: float = 0.0

    @property
    def passed(self) -> bool:
        return all(g.score >= PASS_SCORE for g in self.grades)


@dataclass(frozen=True)
class Report:
    id: str
    suite: str
    """The suite's full name."""
    suite_etag: str
    prompt_version: str
    cases: tuple[CaseResult, ...]
    score: float = 0.0
    passed_cases: int = 0
    total_cases: int = 0
    actor: str = ""
    create_time: datetime | None = None


def scored(report: Report, suite: r.Record[r.EvalSuite]) -> Report:
    """``report`` checked against ``suite`` as stored and given its scores; raises
    INVALID_ARGUMENT naming each field that does not fit."""
    problems: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        problems.append(FieldViolation(f"report.{field}", description))

    if report.suite_etag != suite.etag:
        bad(
            "suite_etag",
            f"is {report.suite_etag!r}, but the suite is at {suite.etag!r}: "
            "run the suite as it is now",
        )
    cases = {c.id: c for c in suite.spec.cases}
    seen: set[str] = set()
    results: list[CaseResult] = []
    for i, result in enumerate(report.cases):
        case = cases.get(result.case_id)
        if case is None:
            bad(f"cases[{i}].case_id", f"the suite has no case {result.case_id!r}")
            continue
        if result.case_id in seen:
            bad(f"cases[{i}].case_id", f"case {result.case_id!r} is reported twice")
        seen.add(result.case_id)
        if len(result.grades) != len(case.expectations):
            bad(
                f"cases[{i}].grades",
                f"case {case.id!r} has {len(case.expectations)} expectations, "
                f"not {len(result.grades)}",
            )
            continue
        for j, (grade, expected) in enumerate(zip(result.grades, case.expectations, strict=True)):
            if grade.grader is not expected.grader:
                bad(f"cases[{i}].grades[{j}].grader", f"the expectation's is {expected.grader}")
            if not (math.isfinite(grade.score) and 0 <= grade.score <= 1):
                bad(f"cases[{i}].grades[{j}].score", "must be from 0 to 1")
        try:
            cost = Decimal(result.cost_usd or "0")
            if not cost.is_finite() or cost < 0:
                raise InvalidOperation
        except InvalidOperation:
            bad(f"cases[{i}].cost_usd", "must be a non-negative decimal number of USD")
        grades = tuple(replace(g, detail=g.detail[:MAX_DETAIL]) for g in result.grades)
        score = sum(g.score for g in grades) / len(grades) if grades else 0.0
        results.append(replace(result, grades=grades, score=score))
    missing = sorted(set(cases) - seen)
    if missing:
        bad("cases", f"has no result for case {missing[0]!r} ({len(missing)} missing)")
    if problems:
        raise InvalidArgument(problems)
    return replace(
        report,
        cases=tuple(results),
        score=sum(c.score for c in results) / len(results),
        passed_cases=sum(c.passed for c in results),
        total_cases=len(results),
    )


def gate_blocks(
    gate: r.EvalGate, candidate: Report | None, baseline: Report | None, baseline_version: str
) -> str | None:
    """Why ``gate`` holds the rollout back (None: it lets it through), given the newest
    reports of the gate's suite, as it is now, on the candidate and the baseline."""
    if candidate is None:
        return f"eval gate: no report of {gate.suite} on the candidate version yet"
    if candidate.score < gate.min_score:
        return (
            f"eval gate: report {candidate.id} scored {candidate.score:.4g}, "
            f"below {gate.min_score:.4g}"
        )
    if gate.max_regression is None:
        return None
    if baseline is None:
        return (
            f"eval gate: no report of {gate.suite} on the baseline version "
            f"{baseline_version} to compare with"
        )
    if candidate.score < baseline.score - gate.max_regression:
        return (
            f"eval gate: report {candidate.id} scored {candidate.score:.4g}, more than "
            f"{gate.max_regression:.4g} below the baseline's {baseline.score:.4g} "
            f"(report {baseline.id})"
        )
    return None
