"""Keys carry permission scopes, and a run may call a tool with a required_scope only if
the key that started it holds that scope: otherwise the model gets a tool error and the
refusal is in the tenant's audit log."""

from __future__ import annotations

from pathlib import Path

import grpc

from pilothouse.v1 import api_key_pb2, discovery_pb2, run_pb2
from tests import helpers as h
from tests.conftest import Live
from tests.integration.test_agent_runs import run_to_end, stage, support_agent
from tests.integration.test_audit import records
from tests.integration.test_telemetry import eventually


async def scoped_key(live: Live, tenant: str, *scopes: str) -> api_key_pb2.CreateApiKeyResponse:
    return await live.keys.CreateApiKey(
        api_key_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(
                role=api_key_pb2.ROLE_CLIENT, tenant=f"tenants/{tenant}", scopes=list(scopes)
            )
        ),
        metadata=live.md(),
    )


async def test_keys_hold_checked_scopes(live: Live) -> None:
    tenant = await live.new_tenant()
    made = await scoped_key(live, tenant, "orders:write", "orders:write", "refunds")
    assert list(made.api_key.scopes) == ["orders:write", "refunds"]
    got = await live.keys.GetApiKey(
        api_key_pb2.GetApiKeyRequest(name=made.api_key.name), metadata=live.md()
    )
    assert list(got.api_key.scopes) == ["orders:write", "refunds"]
    err = await h.fails(scoped_key(live, tenant, "Orders Write"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "api_key.scopes[0]" in h.field_violations(err)


async def test_a_tool_runs_only_for_a_key_holding_its_scope(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    guarded = h.tool(required_scope="orders:write")
    tenant = await support_agent(live, tool=guarded, arguments={"text": "refund AB-1"})
    without = await scoped_key(live, tenant)
    holding = await scoped_key(live, tenant, "orders:write")
    async with stage(live, run_database_url, tmp_path) as s:
        await s.settled()
        for key in (without, holding):
            await s.executor.watcher.wait_for(
                lambda c, k=key: c.get(discovery_pb2.ApiKeyDigest, k.api_key.name) is not None, 5
            )
        request = run_pb2.RunAgentRequest(
            agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "A"}
        )
        refused = await run_to_end(s, without.secret, request)
        (finished,) = [e.tool_call_finished for e in refused if e.HasField("tool_call_finished")]
        assert not finished.executed and "orders:write" in finished.result
        allowed = await run_to_end(s, holding.secret, request)
        (finished,) = [e.tool_call_finished for e in allowed if e.HasField("tool_call_finished")]
        assert finished.executed and finished.ok

        async def audited() -> list[object] | None:
            found = await records(live, f"tenants/{tenant}", "tool.scope_refused")
            return found or None

        # Relayed by this executor's outbox: waited for while it runs.
        (record,) = await eventually(audited)
        assert refused[0].run in record.resource  # type: ignore[attr-defined]
