"""``pilothouse rollout``: canary rollouts of prompt versions.

pilothouse rollout start NAME --prompt P --candidate VERSION [--steps 5,25,50,100] ...
pilothouse rollout status NAME [-o table|json|yaml]
pilothouse rollout watch NAME
pilothouse rollout pause|resume|promote|abort NAME [--reason TEXT]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC
from decimal import Decimal, InvalidOperation
from typing import Any

from pilothouse.cli import output
from pilothouse.cli.ledger import duration
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.v1 import rollout_pb2 as pb

STICKINESS = {
    "session": pb.STICKINESS_SESSION,
    "user": pb.STICKINESS_USER,
    "tenant": pb.STICKINESS_TENANT,
}
# Option → (metric, bound is a ratio to the baseline).
CHECK_OPTIONS = {
    "max_error_rate": (pb.ROLLOUT_METRIC_ERROR_RATE, False),
    "max_p95_latency": (pb.ROLLOUT_METRIC_LATENCY_P95, False),
    "max_p95_latency_ratio": (pb.ROLLOUT_METRIC_LATENCY_P95, True),
    "max_cost_per_run": (pb.ROLLOUT_METRIC_COST_PER_RUN, False),
    "max_cost_ratio": (pb.ROLLOUT_METRIC_COST_PER_RUN, True),
    "max_guardrail_rate": (pb.ROLLOUT_METRIC_GUARDRAIL_VIOLATION_RATE, False),
    "min_feedback_score": (pb.ROLLOUT_METRIC_FEEDBACK_SCORE, False),
}
METRIC_LABELS = {
    pb.ROLLOUT_METRIC_ERROR_RATE: ("error rate", "error_rate", "{:.1%}"),
    pb.ROLLOUT_METRIC_LATENCY_P95: ("p95 latency", "latency_p95_seconds", "{:.2f} s"),
    pb.ROLLOUT_METRIC_COST_PER_RUN: ("cost per run", "cost_per_run_usd", "${}"),
    pb.ROLLOUT_METRIC_GUARDRAIL_VIOLATION_RATE: (
        "guardrail rate",
        "guardrail_violation_rate",
        "{:.1%}",
    ),
    pb.ROLLOUT_METRIC_FEEDBACK_SCORE: ("feedback score", "feedback_score", "{:.2f}"),
}
VERDICTS = {
    pb.VERDICT_PASSED: "pass",
    pb.VERDICT_FAILED: "FAIL",
    pb.VERDICT_INCONCLUSIVE: "hold",
    pb.VERDICT_UNSPECIFIED: "-",
}


def name_of(tenant: str | None, name: str) -> str:
    if name.startswith("tenants/"):
        return name
    if not tenant:
        raise UsageError(f"{name!r} is a short name: say which tenant (--tenant)")
    return f"tenants/{tenant}/rollouts/{name}"


def weights(text: str) -> list[int]:
    """Percentages such as ``5,25,50,100`` → basis points."""
    out = []
    for part in text.split(","):
        try:
            percent = Decimal(part.strip().rstrip("%"))
        except InvalidOperation:
            raise UsageError(f"--steps {text!r}: use percentages such as 5,25,50,100") from None
        out.append(int(percent * 100))
    return out


def build(ns: argparse.Namespace, tenant: str | None) -> pb.Rollout:
    prompt = (
        ns.prompt if ns.prompt.startswith("tenants/") else f"tenants/{tenant}/prompts/{ns.prompt}"
    )
    if not tenant and not ns.prompt.startswith("tenants/"):
        raise UsageError(f"{ns.prompt!r} is a short name: say which tenant (--tenant)")

    def version(text: str) -> str:
        return text if text.startswith("tenants/") else f"{prompt}/versions/{text}"

    ro = pb.Rollout(
        prompt=prompt,
        candidate_version=version(ns.candidate),
        baseline_version=version(ns.baseline) if ns.baseline else "",
        stickiness=STICKINESS[ns.stickiness],
    )
    for weight in weights(ns.steps):
        step = ro.steps.add(weight_bps=weight, min_runs=ns.step_runs)
        if ns.step_duration:
            step.min_duration.FromTimedelta(duration(ns.step_duration, "--step-duration"))
    ro.analysis.interval.FromTimedelta(duration(ns.interval, "--interval"))
    ro.analysis.min_sample_size = ns.min_samples
    ro.analysis.failure_limit = ns.failure_limit
    ro.analysis.consecutive_failure_limit = ns.failures_in_a_row
    checks: dict[int, pb.RolloutCheck] = {}
    for option, (metric, ratio) in CHECK_OPTIONS.items():
        value = getattr(ns, option)
        if value is None:
            continue
        check = checks.setdefault(metric, pb.RolloutCheck(metric=metric))
        if ratio:
            check.baseline_ratio = value
        else:
            check.threshold = value
    ro.analysis.checks.extend(checks.values())
    if ns.eval_suite:
        ro.eval_gate.suite = (
            ns.eval_suite
            if ns.eval_suite.startswith("tenants/")
            else f"tenants/{tenant}/evalSuites/{ns.eval_suite}"
        )
        ro.eval_gate.min_score = ns.eval_min_score
        if ns.eval_max_regression is not None:
            ro.eval_gate.max_regression = ns.eval_max_regression
    elif ns.eval_max_regression is not None:
        raise UsageError("--eval-max-regression needs --eval-suite")
    return ro


def view(ro: pb.Rollout) -> str:
    """The rollout as a person reads it at a glance."""
    state = pb.RolloutState.Name(ro.state).removeprefix("ROLLOUT_STATE_").lower()
    short = ro.candidate_version.rsplit("/", 1)[-1]
    base = ro.baseline_version.rsplit("/", 1)[-1]
    lines = [
        f"Rollout {ro.name}",
        f"  prompt {ro.prompt}: {base} (baseline) → {short} (candidate)",
        f"  state  {state}: {ro.state_reason}",
    ]
    if ro.HasField("eval_gate"):
        gate = ro.eval_gate
        regression = (
            f", at most {gate.max_regression:g} below the baseline"
            if gate.HasField("max_regression")
            else ""
        )
        lines.append(f"  gate   {gate.suite} scores at least {gate.min_score:g}{regression}")
    marks = []
    for i, step in enumerate(ro.steps):
        text = f"{step.weight_bps / 100:g}%"
        if i == ro.step_index and state in ("progressing", "paused"):
            text = f"[{text}]"
        elif i < ro.step_index or state == "promoted":
            text = f"{text} ✓"
        marks.append(text)
    since = (
        ro.step_start_time.ToDatetime(UTC).strftime("%H:%M:%S")
        if ro.HasField("step_start_time")
        else "-"
    )
    lines.append(
        f"  steps  {' → '.join(marks)}   candidate share {ro.weight_bps / 100:g}%"
        f", step since {since}"
    )
    limit = ro.analysis.failure_limit or 1
    lines.append(f"  failed analyses {ro.failed_analyses} of {limit} allowed")
    if not ro.HasField("last_analysis"):
        lines.append("  no analysis yet")
        return "\n".join(lines)
    a = ro.last_analysis
    at = a.analysis_time.ToDatetime(UTC).strftime("%H:%M:%S")
    lines.append(f"  last analysis {at}: {VERDICTS[a.verdict]}")
    by_variant = {v.variant: v for v in a.variants}
    rows = []
    checked = {c.metric: c for c in a.checks}
    for metric, (label, field, fmt) in METRIC_LABELS.items():
        cells = []
        for variant in ("baseline", "candidate"):
            v = by_variant.get(variant)
            value = getattr(v, field) if v is not None else 0
            cells.append(fmt.format(value) if v is not None and v.runs else "-")
        check = checked.get(metric)
        bound = _bound(ro, metric)
        rows.append(
            [
                label,
                *cells,
                bound,
                VERDICTS[check.verdict] if check else "-",
                check.detail if check and check.verdict != pb.VERDICT_PASSED else "",
            ]
        )
    rows.insert(
        0,
        [
            "runs",
            *(
                str(by_variant[v].runs) if v in by_variant else "0"
                for v in ("baseline", "candidate")
            ),
            f"≥ {ro.analysis.min_sample_size or 20}",
            "",
            "",
        ],
    )
    table = output.table(["", "BASELINE", "CANDIDATE", "BOUND", "CHECK", "WHY"], rows)
    lines += ["", *("  " + line for line in table.splitlines())]
    return "\n".join(lines)


def _bound(ro: pb.Rollout, metric: int) -> str:
    for check in ro.analysis.checks:
        if check.metric != metric:
            continue
        sign = "≥" if metric == pb.ROLLOUT_METRIC_FEEDBACK_SCORE else "≤"
        parts = []
        if check.HasField("threshold"):
            parts.append(f"{sign} {check.threshold:g}")
        if check.HasField("baseline_ratio"):
            parts.append(f"{sign} {check.baseline_ratio:g}× baseline")
        return ", ".join(parts)
    return "-"


async def command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    stub = client.rollouts
    action = ns.rollout_command
    if action == "start":
        if not tenant:
            raise UsageError("say which tenant (--tenant or PILOTHOUSE_TENANT)")
        got = await client.call(
            stub.CreateRollout,
            pb.CreateRolloutRequest(
                parent=f"tenants/{tenant}", rollout_id=ns.name, rollout=build(ns, tenant)
            ),
        )
        print(view(got.rollout))
        return 0
    name = name_of(tenant, ns.name)
    if action == "status":
        status = await client.call(stub.GetRollout, pb.GetRolloutRequest(name=name))
        if ns.output == "table":
            print(view(status.rollout))
        else:
            print(output.dump(output.as_dict(status.rollout), ns.output))
        return 0
    if action == "watch":
        clear = sys.stdout.isatty()
        async for update in client.stream(stub.WatchRollout, pb.WatchRolloutRequest(name=name)):
            if clear:
                print("\x1b[2J\x1b[H", end="")
            print(view(update.rollout), flush=True)
            if not clear:
                print(flush=True)
        return 0
    methods: dict[str, Any] = {
        "pause": (stub.PauseRollout, pb.PauseRolloutRequest),
        "resume": (stub.ResumeRollout, pb.ResumeRolloutRequest),
        "promote": (stub.PromoteRollout, pb.PromoteRolloutRequest),
        "abort": (stub.AbortRollout, pb.AbortRolloutRequest),
    }
    method, request = methods[action]
    moved = await client.call(method, request(name=name, reason=ns.reason))
    print(view(moved.rollout))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser, fmt: dict[str, Any]) -> None:
    rollout = sub.add_parser("rollout", help="canary rollouts of prompt versions")
    actions = rollout.add_subparsers(dest="rollout_command", required=True)
    start = actions.add_parser(
        "start", help="roll a prompt's candidate version out in steps", parents=[common]
    )
    start.add_argument("name", help="the rollout's id")
    start.add_argument("--prompt", required=True, help="prompt id or full name")
    start.add_argument("--candidate", required=True, help="version id or full name")
    start.add_argument("--baseline", help="default: the prompt's production version")
    start.add_argument("--steps", default="5,25,50,100", help="candidate shares in %%")
    start.add_argument("--step-duration", help="least time at each step, e.g. 10m")
    start.add_argument("--step-runs", type=int, default=0, help="least candidate runs a step")
    start.add_argument("--interval", default="60s", help="analysis interval (default 60s)")
    start.add_argument("--min-samples", type=int, default=0, help="runs a check needs (20)")
    start.add_argument("--failure-limit", type=int, default=0, help="failed analyses (1)")
    start.add_argument(
        "--failures-in-a-row",
        type=int,
        default=0,
        help="failed candidate runs in a row that fail an analysis at any sample size (3)",
    )
    start.add_argument("--stickiness", choices=sorted(STICKINESS), default="session")
    for option in CHECK_OPTIONS:
        start.add_argument("--" + option.replace("_", "-"), type=float)
    start.add_argument("--eval-suite", help="a suite the candidate must pass first")
    start.add_argument("--eval-min-score", type=float, default=1.0, help="from 0 to 1 (1)")
    start.add_argument("--eval-max-regression", type=float, help="at most this below baseline")
    status = actions.add_parser("status", help="where a rollout stands", parents=[common])
    status.add_argument("name")
    status.add_argument("-o", "--output", **fmt)
    watch = actions.add_parser("watch", help="follow a rollout live", parents=[common])
    watch.add_argument("name")
    for verb, text in (
        ("pause", "hold at the current step"),
        ("resume", "go on from the current step"),
        ("promote", "make the candidate production now"),
        ("abort", "send the candidate's share to 0"),
    ):
        move = actions.add_parser(verb, help=text, parents=[common])
        move.add_argument("name")
        move.add_argument("--reason", default="")
