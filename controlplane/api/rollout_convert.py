"""Rollouts and their analyses ⇄ protobuf."""

from __future__ import annotations

from controlplane.api import _convert
from controlplane.api._convert import _duration, _enum, _enum_map, _set_duration, _timestamp
from controlplane.registry import kinds
from controlplane.registry import resources as r
from controlplane.rollouts.analysis import AnalysisResult, Verdict
from controlplane.rollouts.service import RolloutView
from pilothouse.v1 import rollout_pb2 as pb

STICKINESS = _enum_map(
    {
        pb.STICKINESS_UNSPECIFIED: r.Stickiness.UNSPECIFIED,
        pb.STICKINESS_SESSION: r.Stickiness.SESSION,
        pb.STICKINESS_USER: r.Stickiness.USER,
        pb.STICKINESS_TENANT: r.Stickiness.TENANT,
    }
)
STATES = _enum_map(
    {
        pb.ROLLOUT_STATE_UNSPECIFIED: r.RolloutState.UNSPECIFIED,
        pb.ROLLOUT_STATE_PENDING: r.RolloutState.PENDING,
        pb.ROLLOUT_STATE_PROGRESSING: r.RolloutState.PROGRESSING,
        pb.ROLLOUT_STATE_PAUSED: r.RolloutState.PAUSED,
        pb.ROLLOUT_STATE_PROMOTED: r.RolloutState.PROMOTED,
        pb.ROLLOUT_STATE_ABORTED: r.RolloutState.ABORTED,
    }
)
METRICS = _enum_map(
    {
        pb.ROLLOUT_METRIC_UNSPECIFIED: r.RolloutMetric.UNSPECIFIED,
        pb.ROLLOUT_METRIC_ERROR_RATE: r.RolloutMetric.ERROR_RATE,
        pb.ROLLOUT_METRIC_LATENCY_P95: r.RolloutMetric.LATENCY_P95,
        pb.ROLLOUT_METRIC_COST_PER_RUN: r.RolloutMetric.COST_PER_RUN,
        pb.ROLLOUT_METRIC_GUARDRAIL_VIOLATION_RATE: r.RolloutMetric.GUARDRAIL_VIOLATION_RATE,
        pb.ROLLOUT_METRIC_FEEDBACK_SCORE: r.RolloutMetric.FEEDBACK_SCORE,
    }
)
VERDICTS = _enum_map(
    {
        pb.VERDICT_PASSED: Verdict.PASSED,
        pb.VERDICT_FAILED: Verdict.FAILED,
        pb.VERDICT_INCONCLUSIVE: Verdict.INCONCLUSIVE,
    }
)


def rollout_from_proto(m: pb.Rollout) -> r.Rollout:
    """The fields a caller sets; the output-only ones are the registry's to fill."""
    a = m.analysis
    return r.Rollout(
        prompt=m.prompt,
        baseline_version=m.baseline_version,
        candidate_version=m.candidate_version,
        stickiness=_enum(STICKINESS, m.stickiness, "rollout.stickiness"),
        steps=tuple(
            r.RolloutStep(
                weight_bps=s.weight_bps,
                min_duration=_duration(s, "min_duration"),
                min_runs=s.min_runs,
            )
            for s in m.steps
        ),
        analysis=r.RolloutAnalysis(
            interval=_duration(a, "interval"),
            min_sample_size=a.min_sample_size,
            failure_limit=a.failure_limit,
            consecutive_failure_limit=a.consecutive_failure_limit,
            checks=tuple(
                r.RolloutCheck(
                    metric=_enum(METRICS, c.metric, f"rollout.analysis.checks[{i}].metric"),
                    threshold=c.threshold if c.HasField("threshold") else None,
                    baseline_ratio=c.baseline_ratio if c.HasField("baseline_ratio") else None,
                )
                for i, c in enumerate(a.checks)
            ),
        ),
        eval_gate=r.EvalGate(
            suite=m.eval_gate.suite,
            min_score=m.eval_gate.min_score,
            max_regression=(
                m.eval_gate.max_regression if m.eval_gate.HasField("max_regression") else None
            ),
        )
        if m.HasField("eval_gate")
        else None,
    )


def rollout_to_proto(record: r.Record[r.Rollout]) -> pb.Rollout:
    """The rollout as stored (what executors get in their configuration)."""
    s = record.spec
    m = pb.Rollout(
        prompt=s.prompt,
        baseline_version=s.baseline_version,
        candidate_version=s.candidate_version,
        stickiness=STICKINESS[1][s.stickiness],
        state=STATES[1][s.state],
        state_reason=s.state_reason,
        step_index=s.step_index,
        weight_bps=s.weight_bps,
        failed_analyses=s.failed_analyses,
    )
    for step in s.steps:
        out = m.steps.add(weight_bps=step.weight_bps, min_runs=step.min_runs)
        _set_duration(out.min_duration, step.min_duration)
    _set_duration(m.analysis.interval, s.analysis.interval)
    m.analysis.min_sample_size = s.analysis.min_sample_size
    m.analysis.failure_limit = s.analysis.failure_limit
    m.analysis.consecutive_failure_limit = s.analysis.consecutive_failure_limit
    for check in s.analysis.checks:
        c = m.analysis.checks.add(metric=METRICS[1][check.metric])
        if check.threshold is not None:
            c.threshold = check.threshold
        if check.baseline_ratio is not None:
            c.baseline_ratio = check.baseline_ratio
    if s.eval_gate is not None:
        m.eval_gate.suite = s.eval_gate.suite
        m.eval_gate.min_score = s.eval_gate.min_score
        if s.eval_gate.max_regression is not None:
            m.eval_gate.max_regression = s.eval_gate.max_regression
    _timestamp(m.step_start_time, s.step_start_time)
    _convert._meta(m, record, kinds.ROLLOUT)
    return m


def view_to_proto(view: RolloutView) -> pb.Rollout:
    m = rollout_to_proto(view.record)
    if view.last_analysis is not None:
        m.last_analysis.CopyFrom(analysis_to_proto(view.last_analysis))
    return m


def analysis_to_proto(result: AnalysisResult) -> pb.AnalysisResult:
    m = pb.AnalysisResult(verdict=VERDICTS[1][result.verdict])
    _timestamp(m.analysis_time, result.analysis_time)
    for v in result.variants:
        m.variants.add(
            variant=v.variant,
            runs=v.runs,
            error_rate=v.error_rate,
            latency_p95_seconds=v.latency_p95_seconds,
            cost_per_run_usd=str(v.cost_per_run_usd.normalize()),
            guardrail_violation_rate=v.guardrail_violation_rate,
            feedback_score=v.feedback_score,
            feedback_count=v.feedback_count,
        )
    for c in result.checks:
        m.checks.add(
            metric=METRICS[1][c.metric],
            verdict=VERDICTS[1][c.verdict],
            candidate_value=c.candidate_value,
            baseline_value=c.baseline_value,
            detail=c.detail,
        )
    return m
