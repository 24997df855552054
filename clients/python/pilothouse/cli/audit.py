"""``pilothouse audit list|verify``: a tenant's hash-chained audit log."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

from pilothouse import auditchain
from pilothouse.cli import output
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.v1 import audit_pb2


def add_commands(sub: Any, common: argparse.ArgumentParser, fmt: dict[str, Any]) -> None:
    audit = sub.add_parser("audit", help="the audit log: who decided what (control plane)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    for verb, text in (
        ("list", "a tenant's audit records, oldest first"),
        ("verify", "check a tenant's chain, here and on the control plane"),
    ):
        cmd = audit_sub.add_parser(verb, help=text, parents=[common])
        cmd.add_argument(
            "--system", action="store_true", help="the control plane's own records (no tenant)"
        )
        cmd.add_argument("-o", "--output", **fmt)
    audit_sub.choices["list"].add_argument("--action", default="", help="actions starting so")
    audit_sub.choices["list"].add_argument("--after", type=int, default=0, help="sequence")
    audit_sub.choices["list"].add_argument("--limit", type=int, default=100)
    audit_sub.choices["verify"].add_argument(
        "--expect-head",
        metavar="SEQUENCE:HASH",
        help="a head an earlier verify printed: the chain must still hold it",
    )


def _parent(ns: argparse.Namespace, tenant: str | None) -> str:
    if ns.system:
        return "system"
    if not tenant:
        raise UsageError("say which tenant (--tenant or PILOTHOUSE_TENANT), or --system")
    return f"tenants/{tenant}"


async def _records(
    client: Client, parent: str, *, action: str = "", after: int = 0
) -> AsyncIterator[audit_pb2.AuditRecord]:
    request = audit_pb2.ListAuditRecordsRequest(
        parent=parent, page_size=1000, action_prefix=action, after_sequence=after
    )
    while True:
        response = await client.call(client.audit.ListAuditRecords, request)
        for record in response.records:
            yield record
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token


def record_of(m: audit_pb2.AuditRecord) -> auditchain.Record:
    """An audit record as the chain is checked on."""
    return auditchain.Record(
        m.chain,
        m.sequence,
        m.time.ToDatetime(UTC),
        m.actor,
        m.action,
        m.resource,
        m.details,
        m.event_id,
        m.prev_hash,
        m.hash,
    )


async def command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    parent = _parent(ns, tenant)
    if ns.audit_command == "list":
        records = []
        async for record in _records(client, parent, action=ns.action, after=ns.after):
            records.append(record)
            if len(records) >= ns.limit:
                break
        if ns.output != "table":
            print(output.dump([output.as_dict(r) for r in records], ns.output))
        elif not records:
            print("No audit records.")
        else:
            rows = [
                [
                    str(r.sequence),
                    r.time.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                    r.actor,
                    r.action,
                    r.resource,
                    r.details if len(r.details) <= 60 else r.details[:57] + "...",
                ]
                for r in records
            ]
            print(output.table(["SEQ", "TIME", "ACTOR", "ACTION", "RESOURCE", "DETAILS"], rows))
        return 0
    return await _verify(client, ns, parent)


async def _verify(client: Client, ns: argparse.Namespace, parent: str) -> int:
    """The chain checked twice: by the control plane, and here from its records (which
    trusts nothing the control plane says about them)."""
    expected: tuple[int, str] | None = None
    if ns.expect_head:
        seq, _, digest = ns.expect_head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise UsageError(f"--expect-head {ns.expect_head!r}: use SEQUENCE:HASH")
        expected = (int(seq), digest)
    remote = await client.call(
        client.audit.VerifyAuditLog, audit_pb2.VerifyAuditLogRequest(parent=parent)
    )
    # Records retention removed are gone; the chain is checked from the record after
    # the last of them, which must name its hash.
    pruned = (remote.pruned_through_sequence, remote.pruned_through_hash)
    verifier = auditchain.Verifier(*pruned)
    held: str | None = pruned[1] if expected and expected[0] == pruned[0] else None
    async for record in _records(client, parent):
        if expected and record.sequence == expected[0]:
            held = record.hash
        if not verifier.feed(record_of(record)):
            break
    local = verifier.verdict()
    problems = []
    if not remote.intact:
        problems.append(
            f"the control plane finds record {remote.broken_sequence} broken: {remote.problem}"
        )
    if not local.intact:
        problems.append(f"record {local.broken_at} does not check out here: {local.problem}")
    if expected and expected[0] < pruned[0]:
        problems.append(
            f"record {expected[0]}, the head recorded earlier, was removed by retention "
            f"(records up to {pruned[0]} were): record a newer head to check against"
        )
    elif expected and held != expected[1]:
        problems.append(
            f"record {expected[0]} is not the head recorded earlier"
            + (" (it is gone)" if held is None else f" (its hash is now {held})")
        )
    result = {
        "intact": not problems,
        "verified": local.verified,
        "head": f"{local.head_sequence}:{local.head_hash}",
        "pruned_through": f"{pruned[0]}:{pruned[1]}",
        "problems": problems,
    }
    if ns.output != "table":
        print(output.dump(result, ns.output))
    elif problems:
        print("BROKEN: " + "; ".join(problems))
    else:
        print(
            f"intact: {local.verified} records. Head {result['head']}"
            + (f" (records up to {pruned[0]} removed by retention)" if pruned[0] else "")
        )
    return 0 if not problems else 1
