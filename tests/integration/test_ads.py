"""The xDS protocol as the control plane speaks it, checked with a raw ADS client."""

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

from controlplane.api.ads import TYPE_PREFIX, TYPE_URLS
from pilothouse.v1 import api_key_pb2, discovery_pb2_grpc, prompt_pb2, tool_pb2
from pilothouse.v1 import discovery_pb2 as ph_discovery
from tests import helpers as h
from tests.conftest import Live
from tests.integration.test_registry_api import _registry_with_agent

TOOL_URL = TYPE_PREFIX + "Tool"


@dataclass
class RawAds:
    """One ADS stream, driven by hand. Responses are read in the background (a read
    that times out would cancel the whole call)."""

    call: grpc.aio.StreamStreamCall[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]
    node: base_pb2.Node
    acked: dict[str, str] = field(default_factory=dict)
    inbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = field(
        default_factory=asyncio.Queue
    )

    async def pump(self) -> None:
        try:
            async for response in self.call:
                await self.inbox.put(response)
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            await self.inbox.put(e)

    async def send(
        self, type_url: str, version: str = "", nonce: str = "", error: str = ""
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            node=self.node, type_url=type_url, version_info=version, response_nonce=nonce
        )
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def recv(self, timeout: float = 5) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self.inbox.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.inbox.get(), seconds)

    async def subscribe_all(self) -> dict[str, discovery_pb2.DiscoveryResponse]:
        for url in TYPE_URLS:
            await self.send(url)
        return await self.collect(len(TYPE_URLS))

    async def collect(self, count: int) -> dict[str, discovery_pb2.DiscoveryResponse]:
        got = {}
        for _ in range(count):
            response = await self.recv()
            got[response.type_url] = response
        return got

    async def ack_all(self, responses: dict[str, discovery_pb2.DiscoveryResponse]) -> None:
        for url, response in responses.items():
            await self.send(url, response.version_info, response.nonce)
            self.acked[url] = response.version_info


@contextlib.asynccontextmanager
async def ads(live: Live, node_id: str, key: str | None = None) -> AsyncIterator[RawAds]:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(live.channel)
    call = stub.StreamAggregatedResources(metadata=live.md(key))
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


async def test_initial_push_ack_and_change(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    key = await _executor_key(live, tenant)
    async with ads(live, f"node-{tenant}", key) as stream:
        first = await stream.subscribe_all()
        versions = {r.version_info for r in first.values()}
        assert len(versions) == 1, "every type of one push carries the snapshot's version"
        (version,) = versions
        assert all(r.nonce for r in first.values())
        tools = first[TOOL_URL]
        unpacked = [tool_pb2.Tool.FromString(a.value) for a in tools.resources]
        assert [t.name for t in unpacked] == [f"tenants/{tenant}/tools/echo"]
        assert all(a.type_url == TOOL_URL for a in tools.resources)
        await stream.ack_all(first)
        await stream.nothing_for(0.5)  # nothing changed: nothing pushed

        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="more", tool=h.tool()),
            metadata=live.md(),
        )
        pushed = await stream.collect(len(TYPE_URLS))
        new_versions = {r.version_info for r in pushed.values()}
        assert len(new_versions) == 1 and version not in new_versions
        assert len(pushed[TOOL_URL].resources) == 2


async def test_a_tenant_key_sees_only_its_tenant(live: Live) -> None:
    mine = await _registry_with_agent(live)
    theirs = await _registry_with_agent(live)
    async with ads(live, f"node-{mine}", await _executor_key(live, mine)) as stream:
        got = await stream.subscribe_all()
        names = [tool_pb2.Tool.FromString(a.value).name for a in got[TOOL_URL].resources]
        assert names == [f"tenants/{mine}/tools/echo"]
        assert not any(theirs in n for n in names)


async def test_stale_nonce_is_ignored(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    async with ads(live, f"stale-{tenant}", await _executor_key(live, tenant)) as stream:
        await stream.send(TOOL_URL)
        first = await stream.recv()
        await stream.send(TOOL_URL, "bogus-version", "not-the-nonce")
        await stream.nothing_for(0.3)
        await stream.send(TOOL_URL, first.version_info, first.nonce)
        await stream.nothing_for(0.3)


async def test_nack_is_recorded_and_the_version_never_resent(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    node = f"picky-{tenant}"
    key = await _executor_key(live, tenant)
    async with ads(live, node, key) as stream:
        first = await stream.subscribe_all()
        version = first[TOOL_URL].version_info
        for url, response in first.items():
            await stream.send(url, "", response.nonce, error="tool schema refused by test")
        await stream.nothing_for(0.5)

    # Reconnecting does not bring the rejected version back.
    async with ads(live, node, key) as again:
        for url in TYPE_URLS:
            await again.send(url)
        await again.nothing_for(0.5)
        listed = await discovery_pb2_grpc.ExecutorServiceStub(live.channel).ListExecutors(
            ph_discovery.ListExecutorsRequest(page_size=1000), metadata=live.md()
        )
        status = next(e for e in listed.executors if e.node_id == node)
        assert status.last_nack_version == version
        assert status.last_nack_error == "tool schema refused by test"
        assert status.connected and status.cluster == "pool-a"

        # A new version is offered again.
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="fix", tool=h.tool()),
            metadata=live.md(),
        )
        fresh = await again.collect(len(TYPE_URLS))
        assert {r.version_info for r in fresh.values()} != {version}


async def test_ack_is_recorded_and_reconnect_with_current_version_gets_nothing(
    live: Live,
) -> None:
    tenant = await _registry_with_agent(live)
    node = f"steady-{tenant}"
    key = await _executor_key(live, tenant)
    async with ads(live, node, key) as stream:
        first = await stream.subscribe_all()
        await stream.ack_all(first)
        version = first[TOOL_URL].version_info
        await asyncio.sleep(0.2)
    async with ads(live, node, key) as again:
        for url in TYPE_URLS:
            await again.send(url, version)
        await again.nothing_for(0.4)
    listed = await discovery_pb2_grpc.ExecutorServiceStub(live.channel).ListExecutors(
        ph_discovery.ListExecutorsRequest(page_size=1000), metadata=live.md()
    )
    status = next(e for e in listed.executors if e.node_id == node)
    assert status.acked_version == version


async def test_label_move_reaches_a_watching_executor_quickly(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}/prompts/support"
    async with ads(live, f"fast-{tenant}", await _executor_key(live, tenant)) as stream:
        await stream.ack_all(await stream.subscribe_all())
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
        pushed = await stream.collect(len(TYPE_URLS))
        assert loop.time() - started < 5  # generous: the benchmark measures it properly
        prompts = [
            prompt_pb2.Prompt.FromString(a.value) for a in pushed[TYPE_PREFIX + "Prompt"].resources
        ]
        assert prompts[0].labels["production"] == created.prompt_version.name
        versions = pushed[TYPE_PREFIX + "PromptVersion"].resources
        assert created.prompt_version.name in {
            prompt_pb2.PromptVersion.FromString(a.value).name for a in versions
        }


async def test_only_executors_and_admins_may_watch(live: Live) -> None:
    tenant = await live.new_tenant()
    operator = await live.new_key(api_key_pb2.ROLE_OPERATOR, tenant)
    async with ads(live, "intruder", operator) as stream:
        await stream.send(TOOL_URL)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.recv()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_types_move_to_a_new_snapshot_together(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    async with ads(live, f"lockstep-{tenant}", await _executor_key(live, tenant)) as stream:
        first = await stream.subscribe_all()
        urls = list(first)
        for url in urls[:3]:
            await stream.send(url, first[url].version_info, first[url].nonce)
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="mid", tool=h.tool()),
            metadata=live.md(),
        )
        await live.plane.publisher.refresh()
        await stream.nothing_for(0.3)  # the round in progress is not broken up
        for url in urls[3:]:
            await stream.send(url, first[url].version_info, first[url].nonce)
        second = await stream.collect(len(TYPE_URLS))
        assert len({r.version_info for r in second.values()}) == 1
        assert second[TOOL_URL].version_info != first[TOOL_URL].version_info
        assert len(second[TOOL_URL].resources) == 2
