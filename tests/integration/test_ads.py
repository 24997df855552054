"""The xDS protocol as the control plane speaks it (Delta, one resource per tenant),
checked with a raw ADS client over a live server. The protocol's rules one by one are in
tests/unit/test_delta_protocol.py; here they are seen end to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from pilothouse.configuration import TENANT_CONFIGURATION_URL, combined_version
from pilothouse.v1 import api_key_pb2, discovery_pb2_grpc, prompt_pb2, tenant_pb2, tool_pb2
from pilothouse.v1 import discovery_pb2 as ph_discovery
from tests import helpers as h
from tests.conftest import Live
from tests.integration.test_registry_api import _registry_with_agent

URL = TENANT_CONFIGURATION_URL


@dataclass
class RawAds:
    """One Delta ADS stream, driven by hand. Responses are read in the background (a read
    that times out would cancel the whole call)."""

    call: grpc.aio.StreamStreamCall[
        discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse
    ]
    node: base_pb2.Node
    inbox: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | BaseException] = field(
        default_factory=asyncio.Queue
    )

    async def pump(self) -> None:
        try:
            async for response in self.call:
                await self.inbox.put(response)
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            await self.inbox.put(e)

    async def subscribe(self, held: dict[str, str] | None = None) -> None:
        await self.call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=self.node, type_url=URL, initial_resource_versions=held or {}
            )
        )

    async def answer(self, response: discovery_pb2.DeltaDiscoveryResponse, error: str = "") -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            node=self.node, type_url=URL, response_nonce=response.nonce
        )
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def recv(self, timeout: float = 5) -> discovery_pb2.DeltaDiscoveryResponse:
        item = await asyncio.wait_for(self.inbox.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def initial(self, *, answer: bool = True) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """The stream's initial state: the responses up to the one that ends it (which
        carries the version of everything the stream may see), each answered unless not
        ``answer``; the marker is always acknowledged."""
        got = []
        while True:
            response = await self.recv()
            if not response.resources and not response.removed_resources:
                assert response.system_version_info
                await self.answer(response)
                return got
            got.append(response)
            if answer:
                await self.answer(response)

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.inbox.get(), seconds)


@contextlib.asynccontextmanager
async def ads(live: Live, node_id: str, key: str | None = None) -> AsyncIterator[RawAds]:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(live.channel)
    call = stub.DeltaAggregatedResources(metadata=live.md(key))
    stream = RawAds(call, base_pb2.Node(id=node_id, cluster="pool-a"))
    pump = asyncio.create_task(stream.pump())
    try:
        yield stream
    finally:
        call.cancel()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def _executor_key(live: Live, tenant: str | None = None) -> str:
    """A key for an executor; by then the snapshot has caught up with every change made so
    far, so a test's first push is the last one until it changes something itself."""
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, tenant)
    await live.plane.publisher.refresh()
    return key


def bundle(response: discovery_pb2.DeltaDiscoveryResponse) -> ph_discovery.TenantConfiguration:
    (resource,) = response.resources
    out = ph_discovery.TenantConfiguration()
    assert resource.resource.Unpack(out)
    assert (out.name, out.version) == (resource.name, resource.version)
    return out


def tools(config: ph_discovery.TenantConfiguration) -> list[str]:
    found = []
    for packed in config.resources:
        tool = tool_pb2.Tool()
        if packed.Unpack(tool):
            found.append(tool.name)
    return found


async def executor_status(live: Live, node: str) -> ph_discovery.Executor:
    listed = await discovery_pb2_grpc.ExecutorServiceStub(live.channel).ListExecutors(
        ph_discovery.ListExecutorsRequest(page_size=1000), metadata=live.md()
    )
    return next(e for e in listed.executors if e.node_id == node)


async def test_a_tenants_configuration_is_pushed_acknowledged_and_changed(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    key = await _executor_key(live, tenant)
    async with ads(live, f"node-{tenant}", key) as stream:
        await stream.subscribe()
        (first,) = await stream.initial()
        config = bundle(first)
        assert first.type_url == URL and first.nonce and first.system_version_info
        assert config.name == f"tenants/{tenant}"
        assert tools(config) == [f"tenants/{tenant}/tools/echo"]
        await stream.nothing_for(0.5)  # nothing changed: nothing pushed

        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="more", tool=h.tool()),
            metadata=live.md(),
        )
        pushed = bundle(await stream.recv())
        assert pushed.version != config.version and len(tools(pushed)) == 2


async def test_a_tenant_key_sees_only_its_tenant(live: Live) -> None:
    mine = await _registry_with_agent(live)
    theirs = await _registry_with_agent(live)
    async with ads(live, f"node-{mine}", await _executor_key(live, mine)) as stream:
        await stream.subscribe(held={f"tenants/{theirs}": "anything"})
        got = await stream.initial()
        pushed = [bundle(r).name for r in got if r.resources]
        removed = [name for r in got for name in r.removed_resources]
        assert pushed == [f"tenants/{mine}"]
        assert removed == [f"tenants/{theirs}"], "what it may not see, it is told to drop"
        await stream.nothing_for(0.3)


async def test_every_tenant_comes_in_a_response_of_its_own(live: Live) -> None:
    a, b = await _registry_with_agent(live), await _registry_with_agent(live)
    async with ads(live, "all-tenants", await _executor_key(live)) as stream:
        await stream.subscribe()
        got = await stream.initial(answer=False)
        assert all(len(response.resources) == 1 for response in got)
        assert {f"tenants/{a}", f"tenants/{b}"} <= {bundle(r).name for r in got}


async def test_stale_nonce_is_ignored(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    async with ads(live, f"stale-{tenant}", await _executor_key(live, tenant)) as stream:
        await stream.subscribe()
        (first,) = await stream.initial(answer=False)
        await stream.call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=stream.node, type_url=URL, response_nonce="not-the-nonce"
            )
        )
        await stream.nothing_for(0.3)
        await stream.answer(first)
        await stream.nothing_for(0.3)


async def test_nack_is_recorded_and_the_version_never_resent(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    node = f"picky-{tenant}"
    key = await _executor_key(live, tenant)
    async with ads(live, node, key) as stream:
        await stream.subscribe()
        (first,) = await stream.initial(answer=False)
        await stream.answer(first, error="tool schema refused by test")
        await stream.nothing_for(0.5)

    # Reconnecting does not bring the rejected version back.
    async with ads(live, node, key) as again:
        await again.subscribe()
        assert await again.initial() == []
        await again.nothing_for(0.5)
        status = await executor_status(live, node)
        assert status.last_nack_version == f"tenants/{tenant}@{first.system_version_info}"
        assert status.last_nack_error == "tool schema refused by test"
        assert status.connected and status.cluster == "pool-a"

        # A new version is offered again.
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="fix", tool=h.tool()),
            metadata=live.md(),
        )
        fresh = await again.recv()
        assert fresh.system_version_info != first.system_version_info


async def test_ack_is_recorded_and_reconnect_with_current_version_gets_nothing(
    live: Live,
) -> None:
    tenant = await _registry_with_agent(live)
    node = f"steady-{tenant}"
    key = await _executor_key(live, tenant)
    async with ads(live, node, key) as stream:
        await stream.subscribe()
        (first,) = await stream.initial()
        await asyncio.sleep(0.2)
    held = {f"tenants/{tenant}": first.system_version_info}
    async with ads(live, node, key) as again:
        await again.subscribe(held=held)
        assert await again.initial() == []
        await again.nothing_for(0.4)
    status = await executor_status(live, node)
    assert status.acked_version == combined_version({tenant: first.system_version_info})
    assert status.acked_version == live.plane.publisher.current.version_for(tenant)


async def test_a_deleted_tenant_is_removed(live: Live) -> None:
    tenant = await live.new_tenant("gone")
    async with ads(live, f"removal-{tenant}", await _executor_key(live)) as stream:
        await stream.subscribe()
        got = await stream.initial()
        assert f"tenants/{tenant}" in {bundle(r).name for r in got}
        await live.tenants.DeleteTenant(
            tenant_pb2.DeleteTenantRequest(name=f"tenants/{tenant}"), metadata=live.md()
        )
        while True:
            response = await stream.recv()
            await stream.answer(response)
            if f"tenants/{tenant}" in response.removed_resources:
                break


async def test_label_move_reaches_a_watching_executor_quickly(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}/prompts/support"
    async with ads(live, f"fast-{tenant}", await _executor_key(live, tenant)) as stream:
        await stream.subscribe()
        await stream.initial()
        created = await live.prompts.CreatePromptVersion(
            prompt_pb2.CreatePromptVersionRequest(
                parent=parent, prompt_version=h.version(tenant, "default", "v2 {{customer}}")
            ),
            metadata=live.md(),
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        await live.prompts.SetPromptLabel(
            prompt_pb2.SetPromptLabelRequest(
                name=parent, label="production", version=created.prompt_version.name
            ),
            metadata=live.md(),
        )
        pushed = bundle(await stream.recv())
        assert loop.time() - started < 5  # generous: the benchmark measures it properly
        prompts, versions = [], []
        for packed in pushed.resources:
            prompt, version = prompt_pb2.Prompt(), prompt_pb2.PromptVersion()
            if packed.Unpack(prompt):
                prompts.append(prompt)
            elif packed.Unpack(version):
                versions.append(version.name)
        assert prompts[0].labels["production"] == created.prompt_version.name
        assert created.prompt_version.name in versions


async def test_only_executors_and_admins_may_watch(live: Live) -> None:
    tenant = await live.new_tenant()
    operator = await live.new_key(api_key_pb2.ROLE_OPERATOR, tenant)
    async with ads(live, "intruder", operator) as stream:
        await stream.subscribe()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.recv()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_protocol_mistakes_are_invalid_arguments(live: Live) -> None:
    key = await _executor_key(live)
    async with ads(live, "", key) as nameless:
        await nameless.subscribe()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await nameless.recv()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node.id" in (info.value.details() or "")
    async with ads(live, "wrong-type", key) as wrong:
        await wrong.call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=wrong.node, type_url="type.googleapis.com/pilothouse.v1.Tool"
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await wrong.recv()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_state_of_the_world_is_not_served(live: Live) -> None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(live.channel)
    call = stub.StreamAggregatedResources(metadata=live.md(await _executor_key(live)))
    await call.write(discovery_pb2.DiscoveryRequest(type_url=URL))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "DeltaAggregatedResources" in (info.value.details() or "")
