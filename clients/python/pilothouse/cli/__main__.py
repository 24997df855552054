"""``pilothouse``: manage Pilothouse from the command line, the way kubectl manages
Kubernetes.

    pilothouse apply -f FILE|DIR|-
    pilothouse get KIND [NAME] [-o table|json|yaml]
    pilothouse describe KIND NAME
    pilothouse delete KIND NAME
    pilothouse prompt versions NAME
    pilothouse prompt label NAME LABEL VERSION
    pilothouse keys create --role ROLE [--tenant T] [--scope S …]
    pilothouse executors
    pilothouse run AGENT --input TEXT [--var K=V] [--no-follow]
    pilothouse runs list|get|watch|cancel
    pilothouse usage [--by tenant|agent|model|prompt-version|...] [--since 24h] [--bucket 1h]
    pilothouse approvals list|approve|deny
    pilothouse rollout start|status|watch|pause|resume|promote|abort
    pilothouse eval run --suite S --prompt-version V | eval report [NAME]
    pilothouse tools import-mcp URL [--prefix P] [--only NAME]
    pilothouse deploy envoy --control-plane HOST:PORT [--tls-cert F --tls-key F] ...

The server, key and TLS come from flags or PILOTHOUSE_ADDR, PILOTHOUSE_API_KEY,
PILOTHOUSE_TLS_CA/_CERT/_KEY; the tenant of short names from --tenant or PILOTHOUSE_TENANT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pilothouse.cli import (
    approvals,
    audit,
    deploy,
    evals,
    kinds,
    ledger,
    mcp_import,
    output,
    quota,
    rollouts,
    runs,
)
from pilothouse.cli.apply import apply_all, explain, report
from pilothouse.cli.manifests import ManifestError, load
from pilothouse.cli.usage import UsageError
from pilothouse.client import Client, ClientConfig, TlsConfig
from pilothouse.errors import ApiError
from pilothouse.v1 import api_key_pb2, discovery_pb2, prompt_pb2


def _common_options() -> argparse.ArgumentParser:
    """Options accepted before or after the command, as kubectl does."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--addr", help="control plane host:port (PILOTHOUSE_ADDR)")
    common.add_argument("--executor", help="executor host:port for runs (PILOTHOUSE_EXECUTOR_ADDR)")
    common.add_argument("--api-key", help="API key (PILOTHOUSE_API_KEY)")
    common.add_argument("--tls-ca", help="CA of the server's certificate; enables TLS")
    common.add_argument("--tls-cert", help="client certificate, for mutual TLS")
    common.add_argument("--tls-key", help="client certificate's key")
    common.add_argument("--tenant", help="tenant of short names (PILOTHOUSE_TENANT)")
    common.add_argument("--timeout", type=float, help="seconds per call (default 30)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="pilothouse",
        description="Manage a Pilothouse control plane.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    apply_cmd = sub.add_parser(
        "apply", help="create or update resources from manifests", parents=[common]
    )
    apply_cmd.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="file, directory or - for stdin; may repeat",
    )

    fmt = {"choices": ["table", "json", "yaml"], "default": "table"}
    get = sub.add_parser("get", help="list resources of a kind, or show one", parents=[common])
    get.add_argument("kind")
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", **fmt)  # type: ignore[arg-type]

    describe = sub.add_parser("describe", help="show one resource in full", parents=[common])
    describe.add_argument("kind")
    describe.add_argument("name")

    delete = sub.add_parser("delete", help="delete a resource", parents=[common])
    delete.add_argument("kind")
    delete.add_argument("name")
    delete.add_argument("--etag", default="", help="delete only if unchanged since read")
    delete.add_argument("--force", action="store_true", help="tenants: with everything in them")

    prompt = sub.add_parser("prompt", help="prompt versions and labels")
    prompt_sub = prompt.add_subparsers(dest="prompt_command", required=True)
    versions = prompt_sub.add_parser("versions", help="list a prompt's versions", parents=[common])
    versions.add_argument("name")
    versions.add_argument("-o", "--output", **fmt)  # type: ignore[arg-type]
    label = prompt_sub.add_parser("label", help="point a label at a version", parents=[common])
    label.add_argument("name")
    label.add_argument("label")
    label.add_argument("version", help="version id (16 hex digits) or full name")

    sub.add_parser(
        "executors", help="executors and the configuration they acknowledged", parents=[common]
    ).add_argument("-o", "--output", **fmt)  # type: ignore[arg-type]

    runs.add_commands(sub, common, fmt)
    ledger.add_commands(sub, common, fmt)
    quota.add_commands(sub, common, fmt)
    rollouts.add_commands(sub, common, fmt)
    evals.add_commands(sub, common, fmt)
    audit.add_commands(sub, common, fmt)
    approvals.add_commands(sub, common, fmt)
    mcp_import.add_commands(sub, common)
    deploy.add_commands(sub)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", help="issue a key; its secret is shown once", parents=[common]
    )
    create.add_argument(
        "--role", required=True, choices=["admin", "operator", "executor", "client"]
    )
    create.add_argument("--display-name", default="")
    create.add_argument("--expires-in", help="e.g. 30d, 12h (default: never)")
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a permission scope the key holds, e.g. orders:write (repeatable): its runs "
        "may call tools that require it",
    )
    return parser


def _option(ns: argparse.Namespace, name: str) -> Any:
    return getattr(ns, name, None)


def _config(ns: argparse.Namespace) -> ClientConfig:
    tls = None
    ca = _option(ns, "tls_ca") or os.environ.get("PILOTHOUSE_TLS_CA")
    cert = _option(ns, "tls_cert") or os.environ.get("PILOTHOUSE_TLS_CERT")
    key = _option(ns, "tls_key") or os.environ.get("PILOTHOUSE_TLS_KEY")
    if ca or cert:
        tls = TlsConfig(
            Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None
        )
    return ClientConfig.from_env(
        address=_option(ns, "addr"),
        executor_address=_option(ns, "executor"),
        api_key=_option(ns, "api_key"),
        tls=tls,
        timeout=_option(ns, "timeout"),
    )


def _tenant(ns: argparse.Namespace) -> str | None:
    value: str | None = _option(ns, "tenant") or os.environ.get("PILOTHOUSE_TENANT") or None
    return value


async def run(ns: argparse.Namespace) -> int:
    if ns.command == "deploy":
        return deploy.command(ns)
    config = _config(ns)
    if not config.api_key:
        raise UsageError("no API key: pass --api-key or set PILOTHOUSE_API_KEY")
    async with Client(config) as client:
        if ns.command == "apply":
            return await _apply(client, ns)
        if ns.command == "get":
            return await _get(client, ns)
        if ns.command == "describe":
            kind = kinds.find(ns.kind)
            item = await kind.get(client, kind.name_of(_tenant(ns), ns.name))
            print(output.describe(kind, item))
            if kind.name == "Prompt":
                print()
                print(await _versions_table(client, item.name, "table"))
            return 0
        if ns.command == "delete":
            return await _delete(client, ns)
        if ns.command == "prompt":
            return await _prompt(client, ns)
        if ns.command == "executors":
            return await _executors(client, ns)
        if ns.command == "run":
            return await runs.run_agent(client, ns, _tenant(ns))
        if ns.command == "runs":
            if ns.runs_command in ("list", "get"):
                return await ledger.runs_command(client, ns, _tenant(ns))
            return await runs.runs_command(client, ns, _tenant(ns))
        if ns.command == "usage":
            return await ledger.usage_command(client, ns, _tenant(ns))
        if ns.command == "quota":
            return await quota.command(client, ns, _tenant(ns))
        if ns.command == "rollout":
            return await rollouts.command(client, ns, _tenant(ns))
        if ns.command == "eval":
            return await evals.command(client, ns, _tenant(ns))
        if ns.command == "audit":
            return await audit.command(client, ns, _tenant(ns))
        if ns.command == "approvals":
            return await approvals.command(client, ns, _tenant(ns))
        if ns.command == "tools":
            return await mcp_import.import_mcp(client, ns, _tenant(ns))
        return await _keys(client, ns)


async def _apply(client: Client, ns: argparse.Namespace) -> int:
    return report(await apply_all(client, load(ns.filename)))


async def _get(client: Client, ns: argparse.Namespace) -> int:
    kind = kinds.find(ns.kind)
    if ns.name:
        items = [await kind.get(client, kind.name_of(_tenant(ns), ns.name))]
    elif kind.name == "QuotaPolicy":
        tenant = _tenant(ns)
        if not tenant:
            raise UsageError("quota policies belong to a tenant: pass --tenant or a NAME")
        items = [await kind.get(client, kind.name_of(None, tenant))]
    else:
        items = await kind.list_all(client, _tenant(ns))
    print(output.render(kind, items, ns.output, single=bool(ns.name)))
    return 0


async def _delete(client: Client, ns: argparse.Namespace) -> int:
    kind = kinds.find(ns.kind)
    name = kind.name_of(_tenant(ns), ns.name)
    if kind.name == "Tenant":
        from pilothouse.v1 import tenant_pb2

        await client.call(
            client.tenants.DeleteTenant,
            tenant_pb2.DeleteTenantRequest(name=name, etag=ns.etag, force=ns.force),
        )
    elif kind.name == "QuotaPolicy":
        raise UsageError("a quota policy cannot be deleted; apply one without limits instead")
    else:
        await kind.delete(client, name, ns.etag)
    print(f"{kind.name.lower()}/{name.rsplit('/', 1)[-1]} ({name}) deleted")
    return 0


async def _versions_table(client: Client, prompt_name: str, fmt: str) -> str:
    prompt_kind = kinds.find("prompt")
    prompt = await prompt_kind.get(client, prompt_name)
    versions: list[Any] = []
    token = ""
    while True:
        response = await client.call(
            client.prompts.ListPromptVersions,
            prompt_pb2.ListPromptVersionsRequest(
                parent=prompt_name, page_size=500, page_token=token
            ),
        )
        versions += list(response.prompt_versions)
        token = response.next_page_token
        if not token:
            break
    versions.sort(key=lambda v: (v.create_time.seconds, v.create_time.nanos))
    if fmt != "table":
        import json

        import yaml

        data = [output.as_dict(v) for v in versions]
        return (
            json.dumps(data, indent=2) if fmt == "json" else yaml.safe_dump(data, sort_keys=False)
        )
    labels_of: dict[str, list[str]] = {}
    for label, version in prompt.labels.items():
        labels_of.setdefault(version, []).append(label)
    rows = [
        [
            v.name.rsplit("/", 1)[-1],
            v.create_time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"),
            ", ".join(sorted(labels_of.get(v.name, []))) or "-",
            v.model_route.rsplit("/", 1)[-1],
        ]
        for v in versions
    ]
    if not rows:
        return "No versions yet."
    return output.table(["VERSION", "CREATED", "LABELS", "MODEL ROUTE"], rows)


async def _prompt(client: Client, ns: argparse.Namespace) -> int:
    prompt_kind = kinds.find("prompt")
    name = prompt_kind.name_of(_tenant(ns), ns.name)
    if ns.prompt_command == "versions":
        print(await _versions_table(client, name, ns.output))
        return 0
    version = ns.version if "/" in ns.version else f"{name}/versions/{ns.version}"
    response = await client.call(
        client.prompts.SetPromptLabel,
        prompt_pb2.SetPromptLabelRequest(name=name, label=ns.label, version=version),
    )
    before = response.previous_version.rsplit("/", 1)[-1] or "(none)"
    after = version.rsplit("/", 1)[-1]
    if response.previous_version == version:
        print(f"label {ns.label} of {name} already points at {after}")
    else:
        print(f"label {ns.label} of {name}: {before} -> {after}")
    return 0


async def _executors(client: Client, ns: argparse.Namespace) -> int:
    executors: list[Any] = []
    token = ""
    while True:
        response = await client.call(
            client.executors.ListExecutors,
            discovery_pb2.ListExecutorsRequest(page_size=500, page_token=token),
        )
        executors += list(response.executors)
        token = response.next_page_token
        if not token:
            break
    if ns.output != "table":
        data = {
            "current_version": response.current_version,
            "executors": [output.as_dict(e) for e in executors],
        }
        print(output.dump(data, ns.output))
        return 0
    print(f"Control plane serves version {response.current_version or '(none)'}.")
    if not executors:
        print("No executors have connected.")
        return 0
    rows = [
        [
            e.node_id,
            e.cluster,
            e.view.removeprefix("tenants/") or "all",
            "yes" if e.connected else "no",
            e.acked_version or "-",
            "yes" if e.in_sync else f"no (should hold {e.expected_version})",
            f"{e.last_nack_version}: {e.last_nack_error}" if e.last_nack_version else "-",
        ]
        for e in executors
    ]
    print(
        output.table(
            ["NODE", "CLUSTER", "SEES", "CONNECTED", "ACKED", "IN SYNC", "LAST NACK"], rows
        )
    )
    return 0


_ROLES = {
    "admin": api_key_pb2.ROLE_ADMIN,
    "operator": api_key_pb2.ROLE_OPERATOR,
    "executor": api_key_pb2.ROLE_EXECUTOR,
    "client": api_key_pb2.ROLE_CLIENT,
}


async def _keys(client: Client, ns: argparse.Namespace) -> int:
    key = api_key_pb2.ApiKey(role=_ROLES[ns.role], display_name=ns.display_name, scopes=ns.scope)
    tenant = _tenant(ns)
    if tenant:
        key.tenant = f"tenants/{tenant}"
    if ns.expires_in:
        key.expire_time.FromDatetime(
            datetime.now(UTC) + ledger.duration(ns.expires_in, "--expires-in")
        )
    response = await client.call(
        client.api_keys.CreateApiKey, api_key_pb2.CreateApiKeyRequest(api_key=key)
    )
    where = response.api_key.tenant or "all tenants"
    scopes = f", scopes {', '.join(response.api_key.scopes)}" if response.api_key.scopes else ""
    print(f"Created {response.api_key.name} ({ns.role}, {where}{scopes}).")
    print("Its secret is shown once; store it now:")
    print(response.secret)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        code = asyncio.run(run(ns))
    except ApiError as e:
        print(f"error: {explain(e)}", file=sys.stderr)
        code = 1
    except (ManifestError, UsageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
