"""``pilothouse approvals list|approve|deny|retry|mark-failed|mark-done``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pilothouse.cli import output
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.v1 import approval_pb2

STATES = {
    "pending": approval_pb2.APPROVAL_STATE_PENDING,
    "approved": approval_pb2.APPROVAL_STATE_APPROVED,
    "denied": approval_pb2.APPROVAL_STATE_DENIED,
    "expired": approval_pb2.APPROVAL_STATE_EXPIRED,
    "resolved": approval_pb2.APPROVAL_STATE_RESOLVED,
    "all": approval_pb2.APPROVAL_STATE_UNSPECIFIED,
}
DECISIONS = {
    "approve": (approval_pb2.DECISION_APPROVE, "let a call waiting to run run"),
    "deny": (approval_pb2.DECISION_DENY, "refuse a call waiting to run"),
    "retry": (
        approval_pb2.DECISION_RETRY,
        "send a call whose outcome is unknown again (same idempotency key)",
    ),
    "mark-failed": (
        approval_pb2.DECISION_MARK_FAILED,
        "tell the model a call whose outcome is unknown failed (--comment says why)",
    ),
    "mark-done": (
        approval_pb2.DECISION_MARK_DONE,
        "tell the model a call whose outcome is unknown succeeded, with --result",
    ),
}
COLUMNS: list[tuple[str, Callable[[Any], str]]] = [
    ("NAME", lambda a: a.name.rsplit("/", 1)[-1]),
    (
        "STATE",
        lambda a: approval_pb2.ApprovalState.Name(a.state).removeprefix("APPROVAL_STATE_").lower(),
    ),
    (
        "KIND",
        lambda a: (
            "unknown outcome"
            if a.kind == approval_pb2.APPROVAL_KIND_UNKNOWN_OUTCOME
            else "tool call"
        ),
    ),
    ("AGENT", lambda a: a.agent.rsplit("/", 1)[-1]),
    ("TOOL", lambda a: a.tool),
    ("ARGUMENTS", lambda a: a.arguments if len(a.arguments) <= 60 else a.arguments[:57] + "..."),
    ("DECIDED BY", lambda a: a.decided_by or "-"),
]


def add_commands(sub: Any, common: argparse.ArgumentParser, fmt: dict[str, Any]) -> None:
    approvals = sub.add_parser("approvals", help="tool calls waiting for a person")
    approvals_sub = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = approvals_sub.add_parser("list", help="a tenant's requests", parents=[common])
    listing.add_argument("--state", choices=list(STATES), default="pending")
    listing.add_argument("-o", "--output", **fmt)
    for verb, (_, what) in DECISIONS.items():
        cmd = approvals_sub.add_parser(verb, help=what, parents=[common])
        cmd.add_argument("name", help="request id (with --tenant) or full name")
        cmd.add_argument("--comment", default="")
        if verb == "mark-done":
            cmd.add_argument(
                "--result", required=True, help="the call's result, as JSON: what the model is told"
            )


async def command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    if ns.approvals_command == "list":
        if not tenant:
            raise UsageError("listing approvals needs a tenant (--tenant)")
        items: list[Any] = []
        token = ""
        while True:
            response = await client.call(
                client.approvals.ListApprovals,
                approval_pb2.ListApprovalsRequest(
                    parent=f"tenants/{tenant}",
                    state=STATES[ns.state],
                    page_size=500,
                    page_token=token,
                ),
            )
            items += list(response.approvals)
            token = response.next_page_token
            if not token:
                break
        if ns.output != "table":
            print(output.dump([output.as_dict(a) for a in items], ns.output))
        elif not items:
            print(
                f"No {ns.state if ns.state != 'all' else ''} approval requests.".replace("  ", " ")
            )
        else:
            print(
                output.table([h for h, _ in COLUMNS], [[f(a) for _, f in COLUMNS] for a in items])
            )
        return 0
    name = ns.name
    if "/" not in name:
        if not tenant:
            raise UsageError(f"approval {name!r}: say which tenant (--tenant)")
        name = f"tenants/{tenant}/approvals/{name}"
    decided = await client.call(
        client.approvals.DecideApproval,
        approval_pb2.DecideApprovalRequest(
            name=name,
            decision=DECISIONS[ns.approvals_command][0],
            comment=ns.comment,
            result=getattr(ns, "result", "") or "",
        ),
    )
    state = approval_pb2.ApprovalState.Name(decided.approval.state).removeprefix("APPROVAL_STATE_")
    print(f"{decided.approval.name}: {state.lower()}")
    return 0
