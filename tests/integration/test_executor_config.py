"""The executor's side of xDS: a real ConfigWatcher against a real control plane."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from dataplane.backoff import Backoff
from dataplane.config import lkg
from dataplane.config.snapshot import ConfigError, ExecutorConfig
from dataplane.config.watcher import ConfigWatcher
from dataplane.server import CHANNEL_OPTIONS
from pilothouse.v1 import (
    agent_pb2,
    api_key_pb2,
    discovery_pb2,
    discovery_pb2_grpc,
    prompt_pb2,
    tool_pb2,
)
from tests import helpers as h
from tests.conftest import Live, start_live
from tests.integration.test_registry_api import _registry_with_agent

FAST = Backoff(initial=0.05, maximum=0.2)


@contextlib.asynccontextmanager
async def watching(
    address: str, key: str, node: str, path: Path, **kwargs: object
) -> AsyncIterator[ConfigWatcher]:
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    watcher = ConfigWatcher(
        channel,
        api_key=key,
        node_id=node,
        cluster="pool-a",
        lkg_path=path,
        backoff=FAST,
        **kwargs,  # type: ignore[arg-type]
    )
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.aclose()
        await channel.close()


async def executor_status(live: Live, node: str) -> discovery_pb2.Executor:
    listed = await discovery_pb2_grpc.ExecutorServiceStub(live.channel).ListExecutors(
        discovery_pb2.ListExecutorsRequest(page_size=1000), metadata=live.md()
    )
    return next(e for e in listed.executors if e.node_id == node)


async def eventually(check: object, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def executor_key(live: Live, tenant: str | None) -> str:
    """An executor key, with the snapshot caught up with its creation."""
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, tenant)
    await live.plane.publisher.refresh()
    return key


def current_for(live: Live, tenant: str) -> object:
    return lambda c: c.version == live.plane.publisher.current.version_for(tenant)


def _has_agent(tenant: str) -> object:
    return lambda c: c.get(agent_pb2.Agent, f"tenants/{tenant}/agents/helper") is not None


async def test_watcher_applies_acks_and_follows_label_moves(live: Live, tmp_path: Path) -> None:
    tenant = await _registry_with_agent(live)
    key = await executor_key(live, tenant)
    node = f"exec-{tenant}"
    async with watching(live.address, key, node, tmp_path / "lkg") as watcher:
        config = await watcher.wait_for(current_for(live, tenant), 5)
        agent = config.get(agent_pb2.Agent, f"tenants/{tenant}/agents/helper")
        assert agent is not None
        before = config.agent_prompt_version(agent)
        assert before is not None and "{{customer}}" in before.template

        async def acked() -> bool:
            current = watcher.current
            assert current is not None
            return (await executor_status(live, node)).acked_version == current.version

        await eventually(acked)
        config = watcher.current
        assert config is not None

        prompt = f"tenants/{tenant}/prompts/support"
        new = await live.prompts.CreatePromptVersion(
            prompt_pb2.CreatePromptVersionRequest(
                parent=prompt, prompt_version=h.version(tenant, "default", "New {{customer}}")
            ),
            metadata=live.md(),
        )
        await live.prompts.SetPromptLabel(
            prompt_pb2.SetPromptLabelRequest(
                name=prompt, label="production", version=new.prompt_version.name
            ),
            metadata=live.md(),
        )
        moved = await watcher.wait_for(
            lambda c: (
                (v := c.agent_prompt_version(agent)) is not None
                and v.name == new.prompt_version.name
            ),
            5,
        )
        assert moved.version != config.version
        saved = await lkg.load(tmp_path / "lkg")
        assert saved is not None and saved.version == moved.version


async def test_a_rejected_snapshot_is_nacked_and_the_old_one_kept(
    live: Live, tmp_path: Path
) -> None:
    tenant = await _registry_with_agent(live)
    key = await executor_key(live, tenant)
    node = f"strict-{tenant}"

    def refuse_poison(config: ExecutorConfig) -> None:
        if any(t.name.endswith("/poison") for t in config.all(tool_pb2.Tool)):
            raise ConfigError("tool poison is not allowed on this executor")

    async with watching(live.address, key, node, tmp_path / "lkg", check=refuse_poison) as w:
        good = await w.wait_for(current_for(live, tenant), 5)
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="poison", tool=h.tool()),
            metadata=live.md(),
        )

        async def nacked() -> bool:
            return "poison" in (await executor_status(live, node)).last_nack_error

        await eventually(nacked)
        assert w.current is not None and w.current.version == good.version
        await live.tools.DeleteTool(
            tool_pb2.DeleteToolRequest(name=f"tenants/{tenant}/tools/poison"), metadata=live.md()
        )
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="fine", tool=h.tool()),
            metadata=live.md(),
        )
        fixed = await w.wait_for(
            lambda c: c.get(tool_pb2.Tool, f"tenants/{tenant}/tools/fine") is not None, 5
        )
        assert fixed.version != good.version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_last_known_good_survives_an_outage_and_reconnects(tmp_path: Path) -> None:
    port = _free_port()
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    plane = await start_live(url, listen=f"127.0.0.1:{port}")
    tenant = await _registry_with_agent(plane)
    key = await plane.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    path = tmp_path / "executor.snapshot"
    async with watching(plane.address, key, "exec-1", path) as first:
        served = await first.wait_for(_has_agent(tenant), 5)
    admin = plane.admin_key
    await plane.channel.close()
    await plane.plane.aclose()

    # The control plane is gone: a restarted executor serves from its file at once.
    async with watching(f"127.0.0.1:{port}", key, "exec-1", path) as restarted:
        assert restarted.current is not None
        assert restarted.current.version == served.version
        assert restarted.current.get(agent_pb2.Agent, f"tenants/{tenant}/agents/helper")
        await asyncio.sleep(0.3)  # a few failed reconnects
        assert not restarted.connected

        back = await start_live(url, listen=f"127.0.0.1:{port}", bootstrap_key=admin)
        try:
            await back.tools.CreateTool(
                tool_pb2.CreateToolRequest(
                    parent=f"tenants/{tenant}", tool_id="new", tool=h.tool()
                ),
                metadata=back.md(),
                wait_for_ready=True,
            )
            current = await restarted.wait_for(
                lambda c: c.get(tool_pb2.Tool, f"tenants/{tenant}/tools/new") is not None, 10
            )

            async def acked() -> bool:
                status = await executor_status(back, "exec-1")
                return status.acked_version == current.version and status.connected

            await eventually(acked)
        finally:
            await back.channel.close()
            await back.plane.aclose()
