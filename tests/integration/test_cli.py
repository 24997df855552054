"""The pilothouse CLI as an operator runs it: a separate process against a live server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Live
from tests.fakes.mcp_server import OrdersMcp

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


@dataclass
class Result:
    code: int
    out: str
    err: str


async def cli(live: Live, *args: str, stdin: str | None = None, key: str | None = None) -> Result:
    env = {
        **os.environ,
        "PILOTHOUSE_ADDR": live.address,
        "PILOTHOUSE_API_KEY": key or live.admin_key,
    }
    env.pop("PILOTHOUSE_TENANT", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pilothouse.cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def _retarget(tenant: str) -> str:
    """The example manifests, moved into a tenant of this test's own."""
    text = "\n---\n".join(p.read_text() for p in sorted(EXAMPLES.glob("*.yaml")))
    return text.replace("tenant: acme", f"tenant: {tenant}").replace(
        "name: acme", f"name: {tenant}"
    )


async def test_apply_examples_twice_is_idempotent(live: Live) -> None:
    tenant = f"cli-{os.urandom(3).hex()}"
    manifests = _retarget(tenant)
    first = await cli(live, "apply", "-f", "-", stdin=manifests)
    assert first.code == 0, first.err
    lines = first.out.strip().splitlines()
    assert len(lines) == 10
    assert lines[0] == f"tenant/{tenant} (tenants/{tenant}) created"
    assert lines[1].endswith("configured")  # the quota policy always exists
    assert all(line.endswith("created") for line in lines[2:])

    second = await cli(live, "apply", "-f", "-", stdin=manifests)
    assert second.code == 0, second.err
    assert all(line.endswith(" unchanged") for line in second.out.strip().splitlines())

    changed = manifests.replace("temperature: 0.2", "temperature: 0.3")
    third = await cli(live, "apply", "-f", "-", stdin=changed)
    assert (
        f"prompt/support-triage (tenants/{tenant}/prompts/support-triage) configured" in third.out
    )
    assert third.out.count("configured") == 1

    versions = await cli(live, "prompt", "versions", "support-triage", "--tenant", tenant)
    rows = versions.out.strip().splitlines()[1:]
    assert len(rows) == 2 and rows[-1].split()[3] == "production"


async def test_apply_a_directory(live: Live, tmp_path: Path) -> None:
    tenant = f"dir-{os.urandom(3).hex()}"
    for path in EXAMPLES.glob("*.yaml"):
        text = path.read_text().replace("tenant: acme", f"tenant: {tenant}")
        (tmp_path / path.name).write_text(text.replace("name: acme", f"name: {tenant}"))
    result = await cli(live, "apply", "-f", str(tmp_path))
    assert result.code == 0, result.err
    assert result.out.count("created") == 9


async def test_get_and_describe(live: Live) -> None:
    tenant = f"get-{os.urandom(3).hex()}"
    assert (await cli(live, "apply", "-f", "-", stdin=_retarget(tenant))).code == 0
    table = await cli(live, "get", "tools", "--tenant", tenant)
    assert table.code == 0
    assert table.out.splitlines()[0].split() == ["NAME", "KIND", "ENDPOINT", "APPROVAL", "AGE"]
    assert "calculator" in table.out and "issue-refund" in table.out
    as_json = await cli(live, "get", "tool", "calculator", "--tenant", tenant, "-o", "json")
    tool = json.loads(as_json.out)
    assert tool["name"] == f"tenants/{tenant}/tools/calculator"
    assert tool["input_schema"]["required"] == ["expression"]
    as_yaml = await cli(live, "--tenant", tenant, "get", "agents", "-o", "yaml")
    assert f"name: tenants/{tenant}/agents/support" in as_yaml.out
    described = await cli(live, "describe", "prompt", "support-triage", "--tenant", tenant)
    assert "Kind: Prompt" in described.out and "VERSION" in described.out


async def test_bad_manifest_names_file_document_and_field(live: Live, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: Tenant\nmetadata: {name: fine}\n---\n"
        "kind: Tool\nmetadata: {name: x, tenant: fine}\nspec:\n  kind: smtp\n"
    )
    result = await cli(live, "apply", "-f", str(bad))
    assert result.code == 1
    assert f"{bad} (document 2)" in result.err and "spec.kind" in result.err
    assert "Traceback" not in result.err
    assert result.out == "", "a manifest that does not parse applies nothing"

    tenant = f"bad-{os.urandom(3).hex()}"
    server_side = (
        f"kind: Tenant\nmetadata: {{name: {tenant}}}\n---\n"
        f"kind: Tool\nmetadata: {{name: x, tenant: {tenant}}}\n"
        "spec:\n  kind: http\n  endpoint: nope\n"
    )
    result = await cli(live, "apply", "-f", "-", stdin=server_side)
    assert result.code == 1
    assert f"tenant/{tenant} (tenants/{tenant}) created" in result.out
    assert "(document 2)" in result.err and "tool.endpoint: 'nope'" in result.err


async def test_user_mistakes_are_one_line_errors(live: Live) -> None:
    for args in (["get", "widgets"], ["get", "tools"], ["apply", "-f", "/no/such/file.yaml"]):
        result = await cli(live, *args)
        assert result.code != 0
        assert result.err.startswith("error: ") and "Traceback" not in result.err, args
    denied = await cli(live, "get", "tenants", key="ph_aaaaaaaaaaaa_" + "A" * 43)
    assert denied.code == 1 and denied.err.startswith("error: UNAUTHENTICATED")


async def test_delete_in_use_and_label_and_keys(live: Live) -> None:
    tenant = f"ops-{os.urandom(3).hex()}"
    assert (await cli(live, "apply", "-f", "-", stdin=_retarget(tenant))).code == 0
    refused = await cli(live, "delete", "tool", "calculator", "--tenant", tenant)
    assert refused.code == 1 and "FAILED_PRECONDITION" in refused.err
    assert f"tenants/{tenant}/agents/support" in refused.err

    changed = _retarget(tenant).replace("temperature: 0.2", "temperature: 0.9")
    changed = changed.replace("labels: [production]", "labels: [canary]")
    assert (await cli(live, "apply", "-f", "-", stdin=changed)).code == 0
    versions = (await cli(live, "prompt", "versions", "support-triage", "--tenant", tenant)).out
    production = next(r.split()[0] for r in versions.splitlines() if "production" in r)
    canary = next(r.split()[0] for r in versions.splitlines() if "canary" in r)
    moved = await cli(
        live, "prompt", "label", "support-triage", "production", canary, "--tenant", tenant
    )
    assert moved.code == 0 and f"{production} -> {canary}" in moved.out

    created = await cli(live, "keys", "create", "--role", "client", "--tenant", tenant)
    assert created.code == 0
    secret = created.out.strip().splitlines()[-1]
    assert secret.startswith("ph_")
    denied = await cli(live, "get", "tools", "--tenant", tenant, key=secret)
    assert denied.code == 1 and "PERMISSION_DENIED" in denied.err


async def test_cli_over_mutual_tls(tmp_path: Path) -> None:
    from controlplane.config import TlsSettings
    from tests.certs import make_certs
    from tests.conftest import start_live

    certs = make_certs(tmp_path)
    secured = await start_live(
        f"sqlite:///{tmp_path / 'cp.db'}",
        tls=TlsSettings(certs.server.cert, certs.server.key, client_ca_file=certs.ca),
    )
    try:
        plain = await cli(secured, "--timeout", "3", "get", "tenants")
        assert plain.code == 1 and "UNAVAILABLE" in plain.err
        tls = await cli(
            secured,
            "get",
            "tenants",
            "--tls-ca",
            str(certs.ca),
            "--tls-cert",
            str(certs.client.cert),
            "--tls-key",
            str(certs.client.key),
        )
        assert tls.code == 0, tls.err
        assert tls.out.startswith("No tenants found.")
    finally:
        await secured.channel.close()
        await secured.plane.aclose()


async def test_tools_import_mcp_registers_the_servers_tools(live: Live) -> None:
    server = await OrdersMcp().start()
    try:
        tenant = f"mcp-{os.urandom(3).hex()}"
        created = await cli(
            live, "apply", "-f", "-", stdin=f"kind: Tenant\nmetadata: {{name: {tenant}}}\n"
        )
        assert created.code == 0, created.err
        first = await cli(live, "tools", "import-mcp", server.url, "--tenant", tenant)
        assert first.code == 0, first.err
        assert sorted(first.out.strip().splitlines()) == [
            f"tool/cancel-order (tenants/{tenant}/tools/cancel-order) created (destructive)",
            f"tool/lookup-order (tenants/{tenant}/tools/lookup-order) created",
            f"tool/ping (tenants/{tenant}/tools/ping) created",
            f"tool/restock (tenants/{tenant}/tools/restock) created",
        ]
        shown = await cli(live, "get", "tool", "cancel-order", "--tenant", tenant, "-o", "json")
        tool = json.loads(shown.out)
        assert tool["kind"] == "TOOL_KIND_MCP" and tool["endpoint"] == server.url
        assert tool["remote_name"] == "cancel_order"
        assert tool["description"] == "Cancel an order. Cannot be undone."
        assert tool["input_schema"]["required"] == ["order_id"]
        assert "annotations" not in tool or tool["annotations"] == {}, "no hint was given"
        ping = await cli(live, "get", "tool", "ping", "--tenant", tenant, "-o", "json")
        assert json.loads(ping.out)["description"] == f"ping on {server.url}"
        lookup = await cli(live, "get", "tool", "lookup-order", "--tenant", tenant, "-o", "json")
        assert json.loads(lookup.out)["annotations"] == {
            "read_only_hint": True,
            "idempotent_hint": True,
        }

        again = await cli(live, "tools", "import-mcp", server.url, "--tenant", tenant)
        assert again.code == 0, again.err
        assert all(line.split(")")[1].startswith(" unchanged") for line in again.out.splitlines())

        prefixed = await cli(
            live,
            "tools",
            "import-mcp",
            server.url,
            "--tenant",
            tenant,
            "--prefix",
            "shop_",
            "--only",
            "restock",
        )
        assert prefixed.out.strip() == (
            f"tool/shop-restock (tenants/{tenant}/tools/shop-restock) created"
        )
        missing = await cli(
            live, "tools", "import-mcp", server.url, "--tenant", tenant, "--only", "refund"
        )
        assert missing.code == 2 and "lists no tool named refund" in missing.err
    finally:
        await server.aclose()

    gone = await cli(live, "tools", "import-mcp", server.url, "--tenant", "x")
    assert gone.code == 1 and gone.err.startswith("error: cannot list the tools of")
    assert "Traceback" not in gone.err


BOMB = "\n".join(
    ["kind: Tenant\nmetadata: {name: bomb}\nspec:\n  displayName: x\nextra:"]
    + [f"  l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
)


async def test_apply_refuses_alias_bombs_and_oversized_files(live: Live, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    refused = await cli(live, "apply", "-f", str(bomb))
    assert refused.code != 0 and "aliases expand to more than" in refused.err
    assert "Traceback" not in refused.err
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (8 * 1024 * 1024) + "\n")
    refused = await cli(live, "apply", "-f", str(big))
    assert refused.code != 0 and "at most" in refused.err and "Traceback" not in refused.err
    # Aliases in reason are fine.
    tenant = f"alias-{os.urandom(3).hex()}"
    fine = tmp_path / "fine.yaml"
    fine.write_text(
        f"kind: Tenant\nmetadata: {{name: &name {tenant}}}\nspec: {{displayName: *name}}\n"
    )
    applied = await cli(live, "apply", "-f", str(fine))
    assert applied.code == 0, applied.err
