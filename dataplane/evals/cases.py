"""One case of an eval suite, run and graded on this executor.

The case's run is an ordinary run of the suite's agent, pinned to the version under
test and recorded on the variant ``eval`` (so rollout analysis, which reads the
baseline and candidate variants, passes over it); each model-judged expectation is a
run of its judge agent on that agent's own version, also on ``eval``. Both go through
admission like any run: the tenant's quota, the agent's budget, tracing, the outbox.
Each run's idempotency key is made of the report's and the case's ids, so asking again
grades the runs made the first time instead of running them twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

from dataplane.evals import graders
from dataplane.guardrails import pii
from dataplane.orchestrator.admission import Admission
from dataplane.orchestrator.runs import Runs
from pilothouse.v1 import eval_pb2

VARIANT = "eval"
STOP_PREFIX = "STOP_REASON_"
MAX_DETAIL = 300


@dataclass(frozen=True)
class Outcome:
    run: str
    """tenants/{tenant}/runs/{run}"""
    stop_reason: str
    """completed, failed, … ; waiting_approval when the run stopped for an approval."""
    answer: str
    cost: Decimal


class CaseRunner:
    def __init__(self, runs: Runs) -> None:
        self._runs = runs

    async def run(
        self, admission: Admission, report_id: str, case: eval_pb2.EvalCase
    ) -> eval_pb2.EvalCaseResult:
        """``admission``: the case's run as the caller asked for it (agent, tenant,
        budget, deadline, trace); its input, variables and pins are set here."""
        key = f"eval-{report_id}-{case.id}"
        outcome = await self._run(
            replace(
                admission,
                input=case.input,
                variables=dict(case.variables),
                idempotency_key=key,
                session_id=f"eval-{report_id}",
                variant=VARIANT,
            )
        )
        result = eval_pb2.EvalCaseResult(
            case_id=case.id, run=outcome.run, stop_reason=outcome.stop_reason
        )
        cost = outcome.cost
        for j, expectation in enumerate(case.expectations):
            g = result.grades.add(grader=expectation.grader)
            if outcome.stop_reason != "completed":
                g.score, g.detail = 0.0, f"the case's run stopped: {outcome.stop_reason}"
            elif expectation.grader == eval_pb2.GRADER_MODEL_JUDGED:
                judged = await self._run(
                    Admission(
                        tenant=admission.tenant,
                        agent=expectation.judge_agent,
                        input=graders.judge_input(expectation.rubric, case.input, outcome.answer),
                        variables={},
                        budget=admission.budget,
                        idempotency_key=f"{key}-judge-{j}",
                        session_id=f"eval-{report_id}",
                        deadline_at=admission.deadline_at,
                        trace=admission.trace,
                        variant=VARIANT,
                        key=admission.key,
                        scopes=admission.scopes,
                    )
                )
                cost += judged.cost
                g.judge_run = judged.run
                if judged.stop_reason != "completed":
                    g.score, g.detail = 0.0, f"the judge's run stopped: {judged.stop_reason}"
                else:
                    verdict = graders.read_verdict(judged.answer)
                    g.score, g.detail = verdict.score, pii.redact(verdict.detail)[:MAX_DETAIL]
            else:
                verdict = graders.grade(expectation, outcome.answer)
                g.score, g.detail = verdict.score, verdict.detail
        result.score = sum(g.score for g in result.grades) / max(len(result.grades), 1)
        result.cost_usd = str(cost.normalize()) if cost else "0"
        return result

    async def _run(self, admission: Admission) -> Outcome:
        admitted = await self._runs.admit(admission, run_now=True)
        run = admitted.run
        answer, reason, cost = "", "waiting_approval", Decimal(0)
        async for event in self._runs.watch(run.id, until_pause=True, known=admitted.events):
            if event.type == "final_answer":
                answer = str(event.payload.get("text", ""))
            elif event.type == "run_stopped":
                reason = str(event.payload.get("reason", "")).removeprefix(STOP_PREFIX).lower()
                cost = _usd(event.payload.get("usage", {}).get("cost_usd", "0"))
        return Outcome(f"tenants/{run.tenant}/runs/{run.id}", reason, answer, cost)


def _usd(text: object) -> Decimal:
    try:
        return Decimal(str(text or "0"))
    except InvalidOperation:
        return Decimal(0)
