"""A rollout's progress as a pure state machine: each function takes the stored rollout
and says what it becomes (a ``Modification`` for the registry to write, with its audit
action), or refuses with FAILED_PRECONDITION naming the state it is in.

    pending ──start──▶ progressing ──(last step held)──▶ promoted
       │                 │    ▲
       │            pause│    │resume
       │                 ▼    │
       └──────────────▶ paused         any unfinished ──abort / failure limit──▶ aborted
                                       any unfinished ──promote──▶ promoted
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

from controlplane.errors import FailedPrecondition, PreconditionViolation
from controlplane.registry import kinds
from controlplane.registry import resources as r
from controlplane.registry.service import Modification
from controlplane.rollouts.analysis import CANDIDATE, AnalysisResult, Verdict

State = r.RolloutState
Change = Callable[[r.Rollout], "Modification[r.Rollout] | None"]
"""A transition: the rollout as stored → what it becomes (None: it stays)."""

DEFAULT_INTERVAL = timedelta(seconds=60)
DEFAULT_MIN_SAMPLE_SIZE = 20
DEFAULT_FAILURE_LIMIT = 1
DEFAULT_CONSECUTIVE_FAILURE_LIMIT = 3
MAX_REASON = 500


def interval(ro: r.Rollout) -> timedelta:
    return ro.analysis.interval or DEFAULT_INTERVAL


def min_sample_size(ro: r.Rollout) -> int:
    return ro.analysis.min_sample_size or DEFAULT_MIN_SAMPLE_SIZE


def failure_limit(ro: r.Rollout) -> int:
    return ro.analysis.failure_limit or DEFAULT_FAILURE_LIMIT


def consecutive_failure_limit(ro: r.Rollout) -> int:
    return ro.analysis.consecutive_failure_limit or DEFAULT_CONSECUTIVE_FAILURE_LIMIT


def start(
    ro: r.Rollout, now: datetime, blocked: str | None = None
) -> Modification[r.Rollout] | None:
    """Pending → the first step (None for any other state). ``blocked``: why the eval
    gate holds it back; it stays pending, saying so."""
    if ro.state is not State.PENDING:
        return None
    if blocked is not None:
        return _hold(ro, blocked)
    spec = _at_step(ro, 0, now, State.PROGRESSING, "started")
    return Modification(spec, "Rollout.start", {"step": 0, "weight_bps": spec.weight_bps})


def pause(ro: r.Rollout, name: str, reason: str) -> Modification[r.Rollout] | None:
    _require(ro, name, {State.PENDING, State.PROGRESSING, State.PAUSED}, "paused")
    if ro.state is State.PAUSED:
        return None
    spec = dataclasses.replace(ro, state=State.PAUSED, state_reason=_reason(reason, "paused"))
    return Modification(spec, "Rollout.pause", {"reason": spec.state_reason})


def resume(ro: r.Rollout, name: str, reason: str) -> Modification[r.Rollout] | None:
    _require(ro, name, {State.PAUSED, State.PROGRESSING, State.PENDING}, "resumed")
    if ro.state is not State.PAUSED:
        return None
    back = State.PROGRESSING if ro.step_start_time is not None else State.PENDING
    spec = dataclasses.replace(ro, state=back, state_reason=_reason(reason, "resumed"))
    return Modification(spec, "Rollout.resume", {"reason": spec.state_reason})


def promote(
    ro: r.Rollout, name: str, reason: str, blocked: str | None = None
) -> Modification[r.Rollout] | None:
    """The candidate becomes production: the prompt's production label moves to it in
    the same transaction. ``blocked``: why the eval gate forbids it."""
    _require(ro, name, {State.PENDING, State.PROGRESSING, State.PAUSED, State.PROMOTED}, "promoted")
    if ro.state is State.PROMOTED:
        return None
    if blocked is not None:
        raise FailedPrecondition(
            f"{name} cannot be promoted: {blocked}",
            [PreconditionViolation("EVAL_GATE", name, blocked)],
        )
    spec = dataclasses.replace(
        ro,
        state=State.PROMOTED,
        state_reason=_reason(reason, "promoted"),
        weight_bps=kinds.FULL_WEIGHT,
    )
    return Modification(
        spec,
        "Rollout.promote",
        {"reason": spec.state_reason, "candidate_version": ro.candidate_version},
        move_label=(ro.prompt, kinds.DEFAULT_PROMPT_LABEL, ro.candidate_version),
    )


def abort(ro: r.Rollout, name: str, reason: str) -> Modification[r.Rollout] | None:
    _require(ro, name, {State.PENDING, State.PROGRESSING, State.PAUSED, State.ABORTED}, "aborted")
    if ro.state is State.ABORTED:
        return None
    spec = dataclasses.replace(
        ro, state=State.ABORTED, state_reason=_reason(reason, "aborted"), weight_bps=0
    )
    return Modification(spec, "Rollout.abort", {"reason": spec.state_reason})


def after_analysis(
    ro: r.Rollout,
    name: str,
    result: AnalysisResult,
    now: datetime,
    promotion_blocked: str | None = None,
) -> Modification[r.Rollout] | None:
    """What an analysis of the current step leads to: a failure counts toward the limit
    (at it the rollout aborts); a pass at a progressing step whose time and runs are in
    takes the next step, or after the last one promotes the candidate, unless
    ``promotion_blocked`` says why the eval gate holds it at the last step. An analysis
    of a step the rollout has left since changes nothing."""
    if ro.state not in (State.PROGRESSING, State.PAUSED) or result.step_index != ro.step_index:
        return None
    if result.verdict is Verdict.FAILED:
        failures = ro.failed_analyses + 1
        failed = "; ".join(
            f"{c.metric.value}: {c.detail}" for c in result.checks if c.verdict is Verdict.FAILED
        )
        if failures >= failure_limit(ro):
            reason = f"analysis failed ({failed}); {failures} of {failure_limit(ro)} allowed"
            aborted = abort(dataclasses.replace(ro, failed_analyses=failures), name, reason)
            assert aborted is not None
            return aborted
        spec = dataclasses.replace(ro, failed_analyses=failures)
        return Modification(
            spec, "Rollout.analysis.failed", {"failed_analyses": failures, "failed": failed}
        )
    if result.verdict is not Verdict.PASSED or ro.state is not State.PROGRESSING:
        return None
    if not step_done(ro, result.variant(CANDIDATE).runs, now):
        return None
    following = ro.step_index + 1
    if following < len(ro.steps):
        spec = _at_step(ro, following, now, State.PROGRESSING, f"step {following} began")
        return Modification(
            spec, "Rollout.step", {"step": following, "weight_bps": spec.weight_bps}
        )
    if promotion_blocked is not None:
        return _hold(ro, f"every step held; {promotion_blocked}")
    return promote(ro, name, f"every step held; the last for {_age(ro, now)}")


def _hold(ro: r.Rollout, why: str) -> Modification[r.Rollout] | None:
    """The rollout stays where it is, its reason saying why (audited when it changes)."""
    why = why[:MAX_REASON]
    if ro.state_reason == why:
        return None
    return Modification(
        dataclasses.replace(ro, state_reason=why), "Rollout.eval_gate.hold", {"reason": why}
    )


def step_done(ro: r.Rollout, candidate_runs: int, now: datetime) -> bool:
    """Whether the current step has lasted its minimum duration and seen its runs."""
    step = ro.steps[ro.step_index]
    if step.min_duration is not None and (
        ro.step_start_time is None or now - ro.step_start_time < step.min_duration
    ):
        return False
    return candidate_runs >= step.min_runs


def _at_step(ro: r.Rollout, index: int, now: datetime, state: State, reason: str) -> r.Rollout:
    return dataclasses.replace(
        ro,
        state=state,
        state_reason=reason,
        step_index=index,
        weight_bps=ro.steps[index].weight_bps,
        step_start_time=now,
    )


def _age(ro: r.Rollout, now: datetime) -> str:
    if ro.step_start_time is None:
        return "0 s"
    return f"{(now - ro.step_start_time).total_seconds():.0f} s"


def _reason(given: str, default: str) -> str:
    return (given.strip() or default)[:MAX_REASON]


def _require(ro: r.Rollout, name: str, allowed: set[State], verb: str) -> None:
    if ro.state not in allowed:
        raise FailedPrecondition(
            f"{name} is {ro.state.value} and cannot be {verb}",
            [PreconditionViolation("ROLLOUT_STATE", name, f"the rollout is {ro.state.value}")],
        )
