"""``pilothouse run`` and ``pilothouse runs``: agents' runs, on an executor."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pilothouse.cli import output
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.v1 import run_pb2


def _agent(name: str, tenant: str | None) -> str:
    if "/" in name:
        return name
    if not tenant:
        raise UsageError(f"agent {name!r}: say which tenant (--tenant or PILOTHOUSE_TENANT)")
    return f"tenants/{tenant}/agents/{name}"


def _run(name: str, tenant: str | None) -> str:
    if "/" in name:
        return name
    if not tenant:
        raise UsageError(f"run {name!r}: say which tenant (--tenant or PILOTHOUSE_TENANT)")
    return f"tenants/{tenant}/runs/{name}"


def _variables(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--var {pair!r}: use NAME=VALUE")
        out[key] = value
    return out


def describe_event(event: run_pb2.RunEvent) -> str:
    """One line a person reads at a glance."""
    kind = event.WhichOneof("event")
    prefix = f"[{event.sequence:>3}]"
    if kind == "run_started":
        version = event.run_started.prompt_version.rsplit("/", 1)[-1]
        return f"{prefix} run started · prompt version {version}"
    if kind == "step_started":
        return f"{prefix} step {event.step_started.step}"
    if kind == "model_call_finished":
        m = event.model_call_finished
        return (
            f"{prefix} model {m.model.rsplit('/', 1)[-1]} · {m.input_tokens} in / "
            f"{m.output_tokens} out tokens · ${m.cost_usd} · {m.latency_seconds * 1000:.1f} ms"
            + (f" · {m.attempts} attempts" if m.attempts > 1 else "")
        )
    if kind == "tool_call_requested":
        asked = event.tool_call_requested
        return f"{prefix} tool call {asked.tool}({asked.arguments})"
    if kind == "tool_call_finished":
        done = event.tool_call_finished
        status = "ok" if done.ok else ("refused" if not done.executed else "failed")
        return f"{prefix} tool {done.tool} {status}: {done.result}"
    if kind == "approval_required":
        a = event.approval_required
        return f"{prefix} waiting for approval of {a.tool}({a.arguments}): {a.reason}"
    if kind == "final_answer":
        return f"{prefix} answer: {event.final_answer.text}"
    if kind == "run_stopped":
        s = event.run_stopped
        reason = run_pb2.StopReason.Name(s.reason).removeprefix("STOP_REASON_").lower()
        detail = f" ({s.detail})" if s.detail else ""
        u = s.usage
        return (
            f"{prefix} stopped: {reason}{detail} · {u.model_calls} model calls, "
            f"{u.tool_calls} tool calls · {u.input_tokens + u.output_tokens} tokens · ${u.cost_usd}"
        )
    return f"{prefix} {kind}"


async def run_agent(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    agent = _agent(ns.agent, tenant)
    fields: dict[str, Any] = {
        "agent": agent,
        "input": ns.input,
        "variables": _variables(ns.var or []),
        "idempotency_key": ns.idempotency_key or "",
        "session_id": ns.session or "",
    }
    if not ns.follow:
        started = await client.call(client.runs.StartRun, run_pb2.StartRunRequest(**fields))
        verb = "started" if started.created else "exists"
        print(f"{started.run.name} {verb}")
        return 0
    stopped: run_pb2.RunEvent | None = None
    async for streamed in client.stream(client.runs.RunAgent, run_pb2.RunAgentRequest(**fields)):
        event = streamed.event
        print(
            json.dumps(output.as_dict(event)) if ns.output == "json" else describe_event(event),
            flush=True,
        )
        if event.WhichOneof("event") == "run_stopped":
            stopped = event
    if stopped is None:
        return 0  # paused for an approval; `pilothouse runs watch` follows it on
    return 0 if stopped.run_stopped.reason == run_pb2.STOP_REASON_COMPLETED else 3


async def runs_command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    """``runs watch`` and ``runs cancel``, on an executor."""
    name = _run(ns.name, tenant)
    if ns.runs_command == "watch":
        async for watched in client.stream(
            client.runs.WatchRun, run_pb2.WatchRunRequest(name=name, after_sequence=ns.after)
        ):
            print(describe_event(watched.event), flush=True)
        return 0
    run = (await client.call(client.runs.CancelRun, run_pb2.CancelRunRequest(name=name))).run
    print(output.dump(output.as_dict(run), ns.output if ns.output != "table" else "yaml"))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser, fmt: dict[str, Any]) -> None:
    run = sub.add_parser("run", help="run an agent on an executor", parents=[common])
    run.add_argument("agent", help="agent id (with --tenant) or full name")
    run.add_argument("--input", required=True, help="the user's message")
    run.add_argument("--var", action="append", help="prompt variable NAME=VALUE; may repeat")
    run.add_argument("--idempotency-key", help="the same key returns the same run")
    run.add_argument("--session", help="session id (keeps a rollout variant)")
    follow = run.add_mutually_exclusive_group()
    follow.add_argument(
        "--follow",
        dest="follow",
        action="store_true",
        default=True,
        help="stream the run's events (default)",
    )
    follow.add_argument(
        "--no-follow", dest="follow", action="store_false", help="queue the run and print its name"
    )
    run.add_argument("-o", "--output", choices=["text", "json"], default="text")

    runs = sub.add_parser(
        "runs",
        help="runs of agents: list and get from the control plane's run index; "
        "watch and cancel on an executor",
    )
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    listing = runs_sub.add_parser(
        "list",
        help="runs newest first, from the run index (every tenant the key sees without --tenant)",
        parents=[common],
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("-o", "--output", **fmt)
    for verb, text in (
        ("get", "show one run, from the run index"),
        ("cancel", "stop a run (on an executor)"),
        ("watch", "follow a run's events (on an executor)"),
    ):
        cmd = runs_sub.add_parser(verb, help=text, parents=[common])
        cmd.add_argument("name", help="run id (with --tenant) or full name")
        cmd.add_argument("-o", "--output", choices=["yaml", "json", "table"], default="yaml")
        if verb == "watch":
            cmd.add_argument("--after", type=int, default=0, help="events after this sequence")
