"""Authentication and roles over the wire."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from controlplane.auth import keys
from pilothouse.v1 import api_key_pb2, tenant_pb2, tool_pb2
from tests import helpers as h
from tests.conftest import Live, start_live

Code = grpc.StatusCode


async def test_every_rpc_needs_a_valid_key(live: Live) -> None:
    tenant = await live.new_tenant()
    request = tool_pb2.ListToolsRequest(parent=f"tenants/{tenant}")
    await h.fails(live.tools.ListTools(request), Code.UNAUTHENTICATED)
    await h.fails(
        live.tools.ListTools(request, metadata=(("authorization", "Basic abc"),)),
        Code.UNAUTHENTICATED,
    )
    await h.fails(
        live.tools.ListTools(request, metadata=live.md("not-a-key")), Code.UNAUTHENTICATED
    )
    forged = keys.generate().token
    await h.fails(live.tools.ListTools(request, metadata=live.md(forged)), Code.UNAUTHENTICATED)
    real = keys.parse(live.admin_key)
    assert real is not None
    wrong_secret = keys.KeyMaterial(real.id, keys.generate().secret).token
    await h.fails(
        live.tools.ListTools(request, metadata=live.md(wrong_secret)), Code.UNAUTHENTICATED
    )


async def test_revoked_and_expired_keys_stop_working(live: Live) -> None:
    tenant = await live.new_tenant()
    request = tool_pb2.ListToolsRequest(parent=f"tenants/{tenant}")
    created = await live.keys.CreateApiKey(
        api_key_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_OPERATOR, tenant=f"tenants/{tenant}")
        ),
        metadata=live.md(),
    )
    await live.tools.ListTools(request, metadata=live.md(created.secret))
    await live.keys.DeleteApiKey(
        api_key_pb2.DeleteApiKeyRequest(name=created.api_key.name), metadata=live.md()
    )
    await h.fails(
        live.tools.ListTools(request, metadata=live.md(created.secret)), Code.UNAUTHENTICATED
    )

    soon = api_key_pb2.ApiKey(role=api_key_pb2.ROLE_OPERATOR, tenant=f"tenants/{tenant}")
    soon.expire_time.FromDatetime(datetime.now(UTC) + timedelta(milliseconds=300))
    short = await live.keys.CreateApiKey(
        api_key_pb2.CreateApiKeyRequest(api_key=soon), metadata=live.md()
    )
    await live.tools.ListTools(request, metadata=live.md(short.secret))
    import asyncio

    await asyncio.sleep(0.4)
    err = await h.fails(
        live.tools.ListTools(request, metadata=live.md(short.secret)), Code.UNAUTHENTICATED
    )
    assert "expired" in (err.details() or "")


async def test_key_secret_is_shown_once_and_stored_hashed(live: Live) -> None:
    created = await live.keys.CreateApiKey(
        api_key_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_EXECUTOR, display_name="pool-a")
        ),
        metadata=live.md(),
    )
    assert created.secret.startswith("ph_")
    got = await live.keys.GetApiKey(
        api_key_pb2.GetApiKeyRequest(name=created.api_key.name), metadata=live.md()
    )
    assert created.secret not in str(got)
    material = keys.parse(created.secret)
    assert material is not None
    from sqlalchemy import text

    async with live.plane.db.snapshot() as conn:
        stored = (
            await conn.execute(
                text("SELECT secret_hash FROM api_keys WHERE id = :id"), {"id": material.id}
            )
        ).scalar_one()
    assert stored == keys.hash_secret(material.secret)
    assert material.secret not in stored


async def test_roles(live: Live) -> None:
    tenant = await live.new_tenant()
    parent = f"tenants/{tenant}"
    create = tool_pb2.CreateToolRequest(parent=parent, tool_id="echo", tool=h.tool())
    client = await live.new_key(api_key_pb2.ROLE_CLIENT, tenant)
    executor = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    err = await h.fails(
        live.tools.CreateTool(create, metadata=live.md(client)), Code.PERMISSION_DENIED
    )
    assert "client" in (err.details() or "")
    await h.fails(
        live.tools.ListTools(tool_pb2.ListToolsRequest(parent=parent), metadata=live.md(client)),
        Code.PERMISSION_DENIED,
    )
    await h.fails(live.tools.CreateTool(create, metadata=live.md(executor)), Code.PERMISSION_DENIED)
    await live.tools.CreateTool(create, metadata=live.md())
    listed = await live.tools.ListTools(
        tool_pb2.ListToolsRequest(parent=parent), metadata=live.md(executor)
    )
    assert len(listed.tools) == 1
    await h.fails(
        live.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(tenant_id="nope", tenant=tenant_pb2.Tenant()),
            metadata=live.md(executor),
        ),
        Code.PERMISSION_DENIED,
    )


async def test_client_keys_must_name_a_tenant(live: Live) -> None:
    err = await h.fails(
        live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT)
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "api_key.tenant" in h.field_violations(err)
    await h.fails(
        live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey()), metadata=live.md()
        ),
        Code.INVALID_ARGUMENT,
    )
    await h.fails(
        live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT, tenant="tenants/ghost")
            ),
            metadata=live.md(),
        ),
        Code.FAILED_PRECONDITION,
    )


async def test_a_revoked_bootstrap_key_stays_revoked_across_restarts(
    own_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As on every pod restart of a deployment that keeps PILOTHOUSE_BOOTSTRAP_KEY set."""
    bootstrap = keys.generate().token
    first = await start_live(own_database_url, bootstrap_key=bootstrap)
    try:
        second_admin = await first.new_key(api_key_pb2.ROLE_ADMIN, None)
        key_id = keys.parse(bootstrap)
        assert key_id is not None
        await first.keys.DeleteApiKey(
            api_key_pb2.DeleteApiKeyRequest(name=f"apiKeys/{key_id.id}"),
            metadata=first.md(second_admin),
        )
    finally:
        await first.channel.close()
        await first.plane.aclose()
    with caplog.at_level(logging.WARNING, logger="controlplane.auth.api_keys"):
        again = await start_live(own_database_url, bootstrap_key=bootstrap)
    try:
        assert "stays revoked" in caplog.text and key_id.id in caplog.text
        listing = api_key_pb2.ListApiKeysRequest()
        await h.fails(
            again.keys.ListApiKeys(listing, metadata=again.md(bootstrap)), Code.UNAUTHENTICATED
        )
        listed = await again.keys.ListApiKeys(listing, metadata=again.md(second_admin))
        assert f"apiKeys/{key_id.id}" not in [k.name for k in listed.api_keys]
    finally:
        await again.channel.close()
        await again.plane.aclose()
