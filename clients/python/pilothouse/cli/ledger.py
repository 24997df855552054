"""``pilothouse usage`` and ``pilothouse runs list|get``: the control plane's usage ledger
and run index, fed by every executor's telemetry."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from pilothouse.cli import output
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.v1 import run_pb2, telemetry_pb2

DIMENSIONS = {
    "tenant": telemetry_pb2.USAGE_DIMENSION_TENANT,
    "agent": telemetry_pb2.USAGE_DIMENSION_AGENT,
    "model": telemetry_pb2.USAGE_DIMENSION_MODEL,
    "prompt-version": telemetry_pb2.USAGE_DIMENSION_PROMPT_VERSION,
    "variant": telemetry_pb2.USAGE_DIMENSION_VARIANT,
    "provider": telemetry_pb2.USAGE_DIMENSION_PROVIDER,
    "tool": telemetry_pb2.USAGE_DIMENSION_TOOL,
    "run": telemetry_pb2.USAGE_DIMENSION_RUN,
}


def duration(text: str, option: str) -> timedelta:
    """A span such as 30s, 15m, 24h or 7d, given for ``option``."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise UsageError(f"{option} {text!r}: use a number and s, m, h or d (e.g. 24h)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match[2]]
    return timedelta(**{unit: int(match[1])})


def _short(name: str) -> str:
    """The last part of a resource name, or its version path for a prompt version."""
    if "/prompts/" in name:
        return name.split("/prompts/", 1)[1].replace("/versions/", "@")
    return name.rsplit("/", 1)[-1] or "-"


def _parent(tenant: str | None) -> str:
    return f"tenants/{tenant}" if tenant else "tenants/-"


def _freshness(f: telemetry_pb2.IndexFreshness) -> str:
    if not f.HasField("last_ingest_time"):
        return "No executor has reported telemetry yet."
    last = f.last_ingest_time.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = f"As of telemetry ingested at {last} UTC"
    if f.pending_events:
        oldest = f.oldest_pending_time.ToDatetime(UTC).strftime("%H:%M:%S")
        text += f"; {f.pending_events} events wait in executors' outboxes (oldest {oldest} UTC)"
    return text + f"; {f.reporting_executors} executors reporting."


async def usage_command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    by = [d.strip() for part in ns.by or [] for d in part.split(",") if d.strip()]
    for dimension in by:
        if dimension not in DIMENSIONS:
            raise UsageError(f"--by {dimension!r}: use one of {', '.join(DIMENSIONS)}")
    end = datetime.now(UTC)
    start = end - duration(ns.since, "--since")
    request = telemetry_pb2.QueryUsageRequest(
        parent=_parent(tenant),
        group_by=[DIMENSIONS[d] for d in by],
        page_size=1000,
    )
    request.start_time.FromDatetime(start)
    request.end_time.FromDatetime(end)
    if ns.bucket:
        request.bucket.CopyFrom(
            duration_pb2.Duration(seconds=int(duration(ns.bucket, "--bucket").total_seconds()))
        )
    rows: list[telemetry_pb2.UsageRow] = []
    while True:
        response = await client.call(client.telemetry.QueryUsage, request)
        rows += list(response.rows)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    if ns.output != "table":
        data = {
            "rows": [output.as_dict(r) for r in rows],
            "freshness": output.as_dict(response.freshness),
        }
        print(output.dump(data, ns.output))
        return 0
    columns: list[tuple[str, Callable[[telemetry_pb2.UsageRow], str]]] = []
    if ns.bucket:
        columns.append(("BUCKET", lambda r: _time(r.bucket_start)))
    columns += [(d.upper(), _dimension(d.replace("-", "_"))) for d in by]
    columns += [
        ("MODEL CALLS", lambda r: str(r.model_calls)),
        ("TOOL CALLS", lambda r: str(r.tool_calls)),
        ("TOKENS IN", lambda r: str(r.input_tokens)),
        ("TOKENS OUT", lambda r: str(r.output_tokens)),
        ("COST $", lambda r: r.cost_usd),
        ("ESTIMATED", _estimated),
        ("MODEL s", lambda r: f"{r.model_seconds:.2f}"),
        ("TOOL s", lambda r: f"{r.tool_seconds:.2f}"),
        ("QUEUE s", lambda r: f"{r.queue_seconds:.2f}"),
        ("APPROVAL s", lambda r: f"{r.approval_wait_seconds:.2f}"),
    ]
    if rows:
        print(output.table([h for h, _ in columns], [[f(r) for _, f in columns] for r in rows]))
    else:
        print(f"No usage since {ns.since} ago.")
    print(_freshness(response.freshness))
    return 0


def _estimated(row: telemetry_pb2.UsageRow) -> str:
    """The model calls billed by the executor's estimate (no usage reported, or lost with
    their executor) and their cost; "-" when none."""
    if not row.estimated_model_calls:
        return "-"
    return f"{row.estimated_model_calls} (${row.estimated_cost_usd})"


def _dimension(field: str) -> Callable[[telemetry_pb2.UsageRow], str]:
    return lambda row: _short(getattr(row, field))


def _time(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S")


SUMMARY_COLUMNS: list[tuple[str, Callable[[telemetry_pb2.RunSummary], str]]] = [
    ("RUN", lambda r: _short(r.name)),
    ("AGENT", lambda r: _short(r.agent)),
    ("STATE", lambda r: run_pb2.RunState.Name(r.state).removeprefix("RUN_STATE_").lower()),
    (
        "STOP",
        lambda r: (
            run_pb2.StopReason.Name(r.stop_reason).removeprefix("STOP_REASON_").lower()
            if r.stop_reason
            else "-"
        ),
    ),
    ("STEPS", lambda r: str(r.steps)),
    ("COST $", lambda r: r.usage.cost_usd or "0"),
    ("EXECUTOR", lambda r: r.executor or "-"),
    ("CREATED", lambda r: _time(r.create_time)),
]


async def runs_command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    """``runs list`` and ``runs get``, from the control plane's run index."""
    if ns.runs_command == "list":
        runs: list[telemetry_pb2.RunSummary] = []
        token = ""
        while len(runs) < ns.limit:
            response = await client.call(
                client.telemetry.ListRunSummaries,
                telemetry_pb2.ListRunSummariesRequest(
                    parent=_parent(tenant), page_size=min(ns.limit, 1000), page_token=token
                ),
            )
            runs += list(response.runs)
            token = response.next_page_token
            if not token:
                break
        runs = runs[: ns.limit]
        if ns.output != "table":
            data: dict[str, Any] = {
                "runs": [output.as_dict(r) for r in runs],
                "freshness": output.as_dict(response.freshness),
            }
            print(output.dump(data, ns.output))
            return 0
        if runs:
            print(
                output.table(
                    [h for h, _ in SUMMARY_COLUMNS],
                    [[f(r) for _, f in SUMMARY_COLUMNS] for r in runs],
                )
            )
        else:
            print("No runs found.")
        print(_freshness(response.freshness))
        return 0
    name = ns.name
    if "/" not in name:
        if not tenant:
            raise UsageError(f"run {name!r}: say which tenant (--tenant or PILOTHOUSE_TENANT)")
        name = f"tenants/{tenant}/runs/{name}"
    got = await client.call(
        client.telemetry.GetRunSummary, telemetry_pb2.GetRunSummaryRequest(name=name)
    )
    data = {"run": output.as_dict(got.run), "freshness": output.as_dict(got.freshness)}
    print(output.dump(data, "json" if ns.output == "json" else "yaml"))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser, fmt: dict[str, Any]) -> None:
    usage = sub.add_parser(
        "usage",
        help="what was spent: the usage ledger (control plane)",
        parents=[common],
        description="Sums of model and tool usage, from every executor's telemetry. "
        "Without --tenant, every tenant the key may see.",
    )
    usage.add_argument(
        "--by",
        action="append",
        help=f"group by ({', '.join(DIMENSIONS)}); repeat or separate with commas",
    )
    usage.add_argument("--since", default="24h", help="how far back (default 24h)")
    usage.add_argument("--bucket", help="time buckets of this width, e.g. 1h (at least 60s)")
    usage.add_argument("-o", "--output", **fmt)
