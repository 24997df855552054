"""``pilothouse quota``: where a tenant stands against its quota policy."""

from __future__ import annotations

import argparse
from datetime import UTC
from typing import Any

from pilothouse.cli import output
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client
from pilothouse.v1 import quota_pb2, tenant_pb2


async def command(client: Client, ns: argparse.Namespace, tenant: str | None) -> int:
    if not tenant:
        raise UsageError("say which tenant (--tenant or PILOTHOUSE_TENANT)")
    got = await client.call(
        client.quota.GetBalance, quota_pb2.GetBalanceRequest(tenant=f"tenants/{tenant}")
    )
    if ns.output != "table":
        print(output.dump(output.as_dict(got), ns.output))
        return 0
    mode = tenant_pb2.FailureMode.Name(got.failure_mode).removeprefix("FAILURE_MODE_").lower()
    if not got.balances:
        print(f"Tenant {tenant!r} has no limits.")
        return 0
    rows = [
        [
            b.limit,
            b.allowed,
            b.spent or "-",
            b.held,
            b.remaining,
            b.window_end_time.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M")
            if b.HasField("window_end_time")
            else "-",
        ]
        for b in got.balances
    ]
    print(output.table(["LIMIT", "ALLOWED", "SPENT", "HELD", "REMAINING", "WINDOW ENDS"], rows))
    print(f"{got.leases} executor leases live; {mode.replace('unspecified', 'fail_closed')}.")
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser, fmt: dict[str, Any]) -> None:
    quota = sub.add_parser(
        "quota",
        help="a tenant's limits: spent, held by executors, remaining (control plane)",
        parents=[common],
    )
    quota.add_argument("-o", "--output", **fmt)
