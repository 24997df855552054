"""Each tenant's configuration reaches executors on its own: one tenant's oversized or
rejected configuration never holds back another's new keys or revocations."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc

from dataplane.config.snapshot import ConfigError, ExecutorConfig
from dataplane.config.watcher import ConfigWatcher
from pilothouse.configuration import MAX_TENANT_CONFIG_BYTES
from pilothouse.v1 import api_key_pb2, discovery_pb2, discovery_pb2_grpc, run_pb2, tool_pb2
from tests import helpers as h
from tests.conftest import Live
from tests.integration.test_agent_runs import Stage, run_to_end, stage, support_agent


def ask(tenant: str) -> run_pb2.RunAgentRequest:
    return run_pb2.RunAgentRequest(
        agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "Ada"}
    )


def bulky_tool(size: int) -> tool_pb2.Tool:
    tool = h.tool()
    tool.input_schema.update({"type": "object", "description": "x" * size})
    return tool


async def key_known(s: Stage, name: str, known: bool) -> None:
    await s.executor.watcher.wait_for(
        lambda c: (c.get(discovery_pb2.ApiKeyDigest, name) is not None) == known, 10
    )


async def test_an_oversized_tenant_holds_back_only_itself(
    live: Live, own_run_database_url: str, tmp_path: Path
) -> None:
    a = await support_agent(live)
    b = await support_agent(live)
    async with stage(live, own_run_database_url, tmp_path) as s:
        await s.settled()
        # Tenant A's configuration grows past what one tenant may send executors: each
        # tool is within its own limits, together they are not.
        count = MAX_TENANT_CONFIG_BYTES // 60_000 + 2
        for i in range(count):
            await live.tools.CreateTool(
                tool_pb2.CreateToolRequest(
                    parent=f"tenants/{a}", tool_id=f"bulky-{i}", tool=bulky_tool(60_000)
                ),
                metadata=live.md(),
            )
        await live.plane.publisher.refresh()
        # Tenant B's new key arrives, and works...
        created = await live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT, tenant=f"tenants/{b}")
            ),
            metadata=live.md(),
        )
        await key_known(s, created.api_key.name, True)
        events = await run_to_end(s, created.secret, ask(b))
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
        # ...and its revocation arrives too.
        await live.keys.DeleteApiKey(
            api_key_pb2.DeleteApiKeyRequest(name=created.api_key.name), metadata=live.md()
        )
        await key_known(s, created.api_key.name, False)
        await h.fails(run_to_end(s, created.secret, ask(b)), grpc.StatusCode.UNAUTHENTICATED)
        # A keeps running on the last configuration that fitted, without the last tool.
        config = s.executor.watcher.current
        assert config is not None
        assert config.get(tool_pb2.Tool, f"tenants/{a}/tools/bulky-{count - 1}") is None
        assert config.get(tool_pb2.Tool, f"tenants/{a}/tools/calc") is not None
        events = await run_to_end(s, await s.client_key(b), ask(b))
        assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED


async def test_a_rejected_tenant_is_rejected_alone(live: Live, tmp_path: Path) -> None:
    """An executor that refuses tenant A's configuration (here, by its own extra check)
    NACKs A's alone: B's is applied, and the control plane records the rejection."""
    a = await support_agent(live)
    b = await support_agent(live)

    def refuse_a(config: ExecutorConfig) -> None:
        tenant = config.tenants.get(a)
        if tenant is not None and tenant.version:
            raise ConfigError(f"tenant {a} refused by this executor")

    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    await live.plane.publisher.refresh()
    node = f"choosy-{os.urandom(3).hex()}"
    channel = grpc.aio.insecure_channel(live.address)
    watcher = ConfigWatcher(
        channel,
        api_key=key,
        node_id=node,
        cluster="pool",
        lkg_path=tmp_path / "lkg",
        check=refuse_a,
    )
    await watcher.start()
    try:
        config = await watcher.wait_for(lambda c: b in c.tenants, 10)
        assert a not in config.tenants
        stub = discovery_pb2_grpc.ExecutorServiceStub(live.channel)
        for _ in range(50):
            listed = await stub.ListExecutors(
                discovery_pb2.ListExecutorsRequest(page_size=1000), metadata=live.md()
            )
            status = next((e for e in listed.executors if e.node_id == node), None)
            if status is not None and status.last_nack_version.startswith(f"tenants/{a}@"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the rejection was not recorded")
        assert f"tenant {a} refused" in status.last_nack_error
        assert not status.in_sync, "it holds no configuration of a"
        assert status.view == "" and status.expected_version == listed.current_version
    finally:
        await watcher.aclose()
        await channel.close()


async def test_an_executor_confined_to_a_tenant_shows_in_sync_with_its_own_view(
    live: Live, tmp_path: Path
) -> None:
    """Its acknowledged version covers its tenant alone, which the control plane's
    current version (of every tenant) never equals: it is compared with its own."""
    tenant = await support_agent(live)
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, tenant)
    await live.plane.publisher.refresh()
    node = f"confined-{os.urandom(3).hex()}"
    channel = grpc.aio.insecure_channel(live.address)
    watcher = ConfigWatcher(
        channel, api_key=key, node_id=node, cluster="pool", lkg_path=tmp_path / "lkg"
    )
    await watcher.start()
    try:
        await watcher.wait_for(lambda c: tenant in c.tenants, 10)
        stub = discovery_pb2_grpc.ExecutorServiceStub(live.channel)
        for _ in range(50):
            listed = await stub.ListExecutors(
                discovery_pb2.ListExecutorsRequest(page_size=1000), metadata=live.md()
            )
            status = next((e for e in listed.executors if e.node_id == node), None)
            if status is not None and status.in_sync:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"never in sync: {status}")
        assert status.view == f"tenants/{tenant}"
        assert status.acked_version == status.expected_version != listed.current_version
        assert status.expected_version == live.plane.publisher.current.version_for(tenant)
    finally:
        await watcher.aclose()
        await channel.close()
