"""A rollout's analysis (numbers per variant, checks with samples, bounds and ratios)
and its progress (steps, promotion, the failure limit) as pure functions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from controlplane.errors import FailedPrecondition
from controlplane.registry import resources as r
from controlplane.rollouts import progress
from controlplane.rollouts.analysis import EndedRun, Verdict, analyse, metrics

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
NAME = "tenants/t/rollouts/canary"
M = r.RolloutMetric


def rollout(*checks: r.RolloutCheck, **fields: object) -> r.Rollout:
    values: dict[str, object] = {
        "prompt": "tenants/t/prompts/p",
        "baseline_version": "tenants/t/prompts/p/versions/aaaaaaaaaaaaaaaa",
        "candidate_version": "tenants/t/prompts/p/versions/bbbbbbbbbbbbbbbb",
        "steps": (r.RolloutStep(500), r.RolloutStep(5000, min_duration=timedelta(minutes=5))),
        "analysis": r.RolloutAnalysis(min_sample_size=4, failure_limit=2, checks=checks),
        "state": r.RolloutState.PROGRESSING,
        "weight_bps": 500,
        "step_start_time": NOW - timedelta(minutes=1),
    }
    values.update(fields)
    return r.Rollout(**values)  # type: ignore[arg-type]


def runs(variant: str, n: int, *, failed: int = 0, seconds: float = 1.0) -> list[EndedRun]:
    return [
        EndedRun(variant, "failed" if i < failed else "completed", seconds + i, 1_500_000_000)
        for i in range(n)
    ]


def test_metrics_of_a_variant() -> None:
    got = metrics(
        "candidate",
        [
            *runs("candidate", 18),
            EndedRun("candidate", "failed", 30.0, 0),
            EndedRun("candidate", "guardrail", 2.0, 0, feedback_sum=1.5, feedback_count=2),
        ],
    )
    assert got.runs == 20
    assert got.error_rate == pytest.approx(0.05)
    assert got.guardrail_violation_rate == pytest.approx(0.05)
    # Nearest rank: the 19th of 20 sorted latencies (1 … 18, 2, 30).
    assert got.latency_p95_seconds == 18.0
    assert got.cost_per_run_usd == Decimal("0.001350000000")
    assert (got.feedback_score, got.feedback_count) == (0.75, 2)


def test_checks_are_inconclusive_below_the_sample_size() -> None:
    ro = rollout(r.RolloutCheck(M.ERROR_RATE, threshold=0.1))
    result = analyse(ro, runs("candidate", 3, failed=3), NOW, min_samples=4)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.checks[0].detail == "candidate has 3 of the 4 runs needed"


def test_a_bound_broken_fails_and_one_kept_passes() -> None:
    ro = rollout(
        r.RolloutCheck(M.ERROR_RATE, threshold=0.1),
        r.RolloutCheck(M.LATENCY_P95, baseline_ratio=1.5),
    )
    ok = analyse(ro, runs("candidate", 10) + runs("baseline", 10), NOW, min_samples=4)
    assert ok.verdict is Verdict.PASSED
    bad = analyse(
        ro, runs("candidate", 10, failed=2, seconds=10) + runs("baseline", 10), NOW, min_samples=4
    )
    assert bad.verdict is Verdict.FAILED
    assert [c.verdict for c in bad.checks] == [Verdict.FAILED, Verdict.FAILED]
    assert bad.checks[0].detail == "0.2 is above 0.1"
    assert "× the baseline's" in bad.checks[1].detail


def test_the_feedback_score_is_a_lower_bound_counted_in_scored_runs() -> None:
    ro = rollout(r.RolloutCheck(M.FEEDBACK_SCORE, threshold=0.6))
    scored = [EndedRun("candidate", "completed", 1.0, 0, 0.5, 1) for _ in range(4)]
    assert analyse(ro, scored, NOW, min_samples=4).verdict is Verdict.FAILED
    assert analyse(ro, scored[:3], NOW, min_samples=4).verdict is Verdict.INCONCLUSIVE


def test_a_baseline_of_zero_needs_the_candidate_at_zero() -> None:
    ro = rollout(r.RolloutCheck(M.ERROR_RATE, baseline_ratio=2.0))
    both = runs("baseline", 5) + runs("candidate", 5, failed=1)
    assert analyse(ro, both, NOW, min_samples=4).verdict is Verdict.FAILED
    clean = runs("baseline", 5) + runs("candidate", 5)
    assert analyse(ro, clean, NOW, min_samples=4).verdict is Verdict.PASSED


def test_a_pass_takes_the_next_step_once_its_time_and_runs_are_in() -> None:
    ro = rollout()
    passed = analyse(ro, runs("candidate", 4), NOW, min_samples=4)
    moved = progress.after_analysis(ro, NAME, passed, NOW)
    assert moved is not None and moved.action == "Rollout.step"
    assert (moved.spec.step_index, moved.spec.weight_bps) == (1, 5000)
    assert moved.spec.step_start_time == NOW
    # The second step asks for five minutes: a pass before then holds.
    at_two = moved.spec
    assert progress.after_analysis(at_two, NAME, passed, NOW + timedelta(minutes=4)) is None
    done = progress.after_analysis(
        at_two, NAME, dataclasses.replace(passed, step_index=1), NOW + timedelta(minutes=5)
    )
    assert done is not None and done.action == "Rollout.promote"
    assert done.spec.state is r.RolloutState.PROMOTED
    assert done.move_label == (ro.prompt, "production", ro.candidate_version)


def test_failures_count_up_to_the_limit_then_abort() -> None:
    ro = rollout(r.RolloutCheck(M.ERROR_RATE, threshold=0.1))
    failed = analyse(ro, runs("candidate", 5, failed=5), NOW, min_samples=4)
    first = progress.after_analysis(ro, NAME, failed, NOW)
    assert first is not None and first.spec.failed_analyses == 1
    assert first.spec.state is r.RolloutState.PROGRESSING
    second = progress.after_analysis(first.spec, NAME, failed, NOW)
    assert second is not None and second.action == "Rollout.abort"
    assert second.spec.state is r.RolloutState.ABORTED and second.spec.weight_bps == 0
    assert "error_rate: 1 is above 0.1" in second.spec.state_reason


def test_an_analysis_of_a_step_left_since_changes_nothing() -> None:
    ro = rollout(step_index=1, weight_bps=5000)
    stale = analyse(ro, [], NOW, min_samples=4)
    assert progress.after_analysis(ro, NAME, dataclasses.replace(stale, step_index=0), NOW) is None


def test_transitions_follow_the_states() -> None:
    ro = rollout()
    paused = progress.pause(ro, NAME, "looking closer")
    assert paused is not None and paused.spec.state is r.RolloutState.PAUSED
    assert paused.spec.state_reason == "looking closer"
    resumed = progress.resume(paused.spec, NAME, "")
    assert resumed is not None and resumed.spec.state is r.RolloutState.PROGRESSING
    aborted = progress.abort(ro, NAME, "")
    assert aborted is not None and aborted.spec.weight_bps == 0
    assert progress.abort(aborted.spec, NAME, "") is None  # again: nothing changes
    with pytest.raises(FailedPrecondition) as info:
        progress.promote(aborted.spec, NAME, "")
    assert str(info.value) == f"{NAME} is aborted and cannot be promoted"
    pending = rollout(state=r.RolloutState.PENDING, weight_bps=0, step_start_time=None)
    started = progress.start(pending, NOW)
    assert started is not None and started.spec.weight_bps == 500
    held = progress.pause(pending, NAME, "")
    assert held is not None
    back = progress.resume(held.spec, NAME, "")
    assert back is not None and back.spec.state is r.RolloutState.PENDING


def test_an_eval_gate_holds_the_start_and_the_promotion() -> None:
    pending = rollout(state=r.RolloutState.PENDING, weight_bps=0, step_start_time=None)
    why = "eval gate: no report of s on the candidate version yet"
    held = progress.start(pending, NOW, why)
    assert held is not None and held.action == "Rollout.eval_gate.hold"
    assert held.spec.state is r.RolloutState.PENDING and held.spec.weight_bps == 0
    assert held.spec.state_reason == why
    assert progress.start(held.spec, NOW, why) is None  # said once, not every tick
    started = progress.start(held.spec, NOW)
    assert started is not None and started.spec.state is r.RolloutState.PROGRESSING

    last = rollout(step_index=1, weight_bps=5000, step_start_time=NOW - timedelta(minutes=6))
    passed = analyse(last, runs("candidate", 4), NOW, min_samples=4)
    kept = progress.after_analysis(last, NAME, passed, NOW, "eval gate: scored 0.5, below 0.8")
    assert kept is not None and kept.spec.state is r.RolloutState.PROGRESSING
    assert kept.spec.state_reason == "every step held; eval gate: scored 0.5, below 0.8"
    with pytest.raises(FailedPrecondition) as refused:
        progress.promote(last, NAME, "by hand", "eval gate: scored 0.5, below 0.8")
    assert refused.value.violations[0].type == "EVAL_GATE"


def test_failures_in_a_row_fail_an_analysis_before_the_sample_is_full() -> None:
    """A candidate whose runs all fail is stopped after a few of them, not after
    min_sample_size; failures spread out are left to the checks."""
    ro = rollout(r.RolloutCheck(M.ERROR_RATE, threshold=0.5))
    ok, bad = EndedRun("candidate", "completed", 1, 0), EndedRun("candidate", "failed", 1, 0)
    stopped = analyse(ro, [ok, bad, bad, bad], NOW, min_samples=20, consecutive_failures=3)
    assert stopped.verdict is Verdict.FAILED
    assert stopped.checks[-1].detail.startswith("3 candidate runs in a row failed")
    spread = [bad, bad, ok, bad, bad, ok, EndedRun("baseline", "failed", 1, 0)]
    held = analyse(ro, spread, NOW, min_samples=20, consecutive_failures=3)
    assert held.verdict is Verdict.INCONCLUSIVE
    assert analyse(ro, [bad] * 5, NOW, min_samples=20).verdict is Verdict.INCONCLUSIVE
    assert progress.consecutive_failure_limit(ro) == 3
