"""Analysis of a rollout: each variant's numbers over the runs that ended during the
current step, and the verdict of each of the rollout's checks on them.

A check is inconclusive while a variant it needs has fewer runs (or, for the feedback
score, fewer scored runs) than the rollout's minimum sample size: it neither passes nor
fails, and the rollout holds. Bounds are upper bounds, except for the feedback score,
where higher is better and they are lower bounds. A ratio bound compares the candidate
with the baseline as ``candidate ≤ ratio × baseline`` (``≥`` for the score), so a
baseline of 0 needs the candidate at 0 too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from controlplane.registry import resources as r

BASELINE = "baseline"
CANDIDATE = "candidate"
VARIANTS = (BASELINE, CANDIDATE)

ERROR_REASONS = frozenset({"failed", "dead_lettered"})
VIOLATION_REASONS = frozenset({"guardrail", "invalid_output"})
PICO = Decimal(10) ** -12
Metric = r.RolloutMetric


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class EndedRun:
    """One run that ended during the step, as the run index and the ledger know it."""

    variant: str
    stop_reason: str
    seconds: float
    """From the run's creation to its end."""
    cost_pico: int
    feedback_sum: float = 0.0
    feedback_count: int = 0


@dataclass(frozen=True)
class VariantMetrics:
    variant: str
    runs: int = 0
    error_rate: float = 0.0
    latency_p95_seconds: float = 0.0
    cost_per_run_usd: Decimal = Decimal(0)
    guardrail_violation_rate: float = 0.0
    feedback_score: float = 0.0
    feedback_count: int = 0

    def value(self, metric: Metric) -> float:
        return {
            Metric.ERROR_RATE: self.error_rate,
            Metric.LATENCY_P95: self.latency_p95_seconds,
            Metric.COST_PER_RUN: float(self.cost_per_run_usd),
            Metric.GUARDRAIL_VIOLATION_RATE: self.guardrail_violation_rate,
            Metric.FEEDBACK_SCORE: self.feedback_score,
        }[metric]

    def samples(self, metric: Metric) -> int:
        return self.feedback_count if metric is Metric.FEEDBACK_SCORE else self.runs


@dataclass(frozen=True)
class CheckResult:
    metric: Metric
    verdict: Verdict
    candidate_value: float
    baseline_value: float
    detail: str


@dataclass(frozen=True)
class AnalysisResult:
    analysis_time: datetime
    step_index: int
    verdict: Verdict
    variants: tuple[VariantMetrics, ...]
    checks: tuple[CheckResult, ...]

    def variant(self, name: str) -> VariantMetrics:
        return next(v for v in self.variants if v.variant == name)


def metrics(variant: str, runs: Sequence[EndedRun]) -> VariantMetrics:
    n = len(runs)
    if n == 0:
        return VariantMetrics(variant)
    latencies = sorted(run.seconds for run in runs)
    scored = sum(run.feedback_count for run in runs)
    return VariantMetrics(
        variant,
        runs=n,
        error_rate=sum(run.stop_reason in ERROR_REASONS for run in runs) / n,
        # Nearest rank: the smallest latency at least 95 % of the runs do not exceed.
        latency_p95_seconds=latencies[math.ceil(0.95 * n) - 1],
        cost_per_run_usd=(Decimal(sum(run.cost_pico for run in runs)) * PICO / n).quantize(PICO),
        guardrail_violation_rate=sum(run.stop_reason in VIOLATION_REASONS for run in runs) / n,
        feedback_score=sum(run.feedback_sum for run in runs) / scored if scored else 0.0,
        feedback_count=scored,
    )


def analyse(
    ro: r.Rollout,
    runs: Sequence[EndedRun],
    now: datetime,
    *,
    min_samples: int,
    consecutive_failures: int = 0,
) -> AnalysisResult:
    """The verdict on ``runs`` (in the order they ended). ``consecutive_failures``: that
    many candidate runs failing in a row fail the analysis whatever the sample size (0:
    no such limit)."""
    by_variant = {
        name: metrics(name, [run for run in runs if run.variant == name]) for name in VARIANTS
    }
    checks = tuple(
        _check(check, by_variant[CANDIDATE], by_variant[BASELINE], min_samples)
        for check in ro.analysis.checks
    )
    streak = longest_failure_streak([run for run in runs if run.variant == CANDIDATE])
    if consecutive_failures and streak >= consecutive_failures:
        checks += (
            CheckResult(
                Metric.ERROR_RATE,
                Verdict.FAILED,
                by_variant[CANDIDATE].error_rate,
                by_variant[BASELINE].error_rate,
                f"{streak} candidate runs in a row failed "
                f"(consecutive_failure_limit {consecutive_failures})",
            ),
        )
    verdicts = {c.verdict for c in checks}
    verdict = (
        Verdict.FAILED
        if Verdict.FAILED in verdicts
        else Verdict.INCONCLUSIVE
        if Verdict.INCONCLUSIVE in verdicts
        else Verdict.PASSED
    )
    return AnalysisResult(
        now, ro.step_index, verdict, (by_variant[BASELINE], by_variant[CANDIDATE]), checks
    )


def longest_failure_streak(runs: Sequence[EndedRun]) -> int:
    """The most runs in a row (in the order given) that stopped with an error."""
    longest = current = 0
    for run in runs:
        current = current + 1 if run.stop_reason in ERROR_REASONS else 0
        longest = max(longest, current)
    return longest


def _check(
    check: r.RolloutCheck, candidate: VariantMetrics, baseline: VariantMetrics, needed: int
) -> CheckResult:
    metric = check.metric
    c, b = candidate.value(metric), baseline.value(metric)
    short = [
        f"{v.variant} has {v.samples(metric)} of the {needed} "
        f"{'scored runs' if metric is Metric.FEEDBACK_SCORE else 'runs'} needed"
        for v in ([candidate, baseline] if check.baseline_ratio is not None else [candidate])
        if v.samples(metric) < needed
    ]
    if short:
        return CheckResult(metric, Verdict.INCONCLUSIVE, c, b, "; ".join(short))
    higher_is_better = metric is Metric.FEEDBACK_SCORE
    broken: list[str] = []
    if check.threshold is not None:
        t = check.threshold
        if (c < t) if higher_is_better else (c > t):
            broken.append(f"{c:.6g} is {'below' if higher_is_better else 'above'} {t:.6g}")
    if check.baseline_ratio is not None:
        bound = check.baseline_ratio * b
        if (c < bound) if higher_is_better else (c > bound):
            broken.append(
                f"{c:.6g} is {'below' if higher_is_better else 'above'} "
                f"{check.baseline_ratio:.6g} × the baseline's {b:.6g}"
            )
    if broken:
        return CheckResult(metric, Verdict.FAILED, c, b, "; ".join(broken))
    return CheckResult(metric, Verdict.PASSED, c, b, "within bounds")
