"""The executor's xDS client: it watches its tenants' configurations over Delta ADS (one
resource per tenant), applies each that passes the checks, and keeps serving on the last
good ones whatever happens to the control plane.

Each response holds one tenant's configuration (or removals) and is answered on its own:
an ACK once applied, a NACK with the reason when rejected, the tenant's previous
configuration staying in force and every other tenant's untouched. A reconnecting stream
says which versions it holds, so nothing it has is sent again. Disconnected, it retries
with exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import code_pb2, status_pb2

from dataplane.backoff import Backoff
from dataplane.config import lkg
from dataplane.config.snapshot import ConfigError, ExecutorConfig, parse_tenant
from pilothouse.configuration import TENANT_CONFIGURATION_URL, tenant_of
from pilothouse.v1 import discovery_pb2 as discovery_pb2_ph

log = logging.getLogger("pilothouse.executor.config")


class ConfigWatcher:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        api_key: str,
        node_id: str,
        cluster: str,
        lkg_path: Path,
        backoff: Backoff | None = None,
        check: Callable[[ExecutorConfig], None] | None = None,
    ) -> None:
        """``check`` runs after the built-in checks on every snapshot; raising ConfigError
        rejects it."""
        self._stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._node = base_pb2.Node(id=node_id, cluster=cluster)
        self._lkg_path = lkg_path
        self._backoff = backoff or Backoff()
        self._check = check
        self._current: ExecutorConfig | None = None
        self._version_seen = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    @property
    def current(self) -> ExecutorConfig | None:
        """The configuration in force; None until one was received or loaded."""
        return self._current

    async def start(self) -> None:
        """Load the last-known-good file (if any), then watch the control plane."""
        try:
            saved = await lkg.load(self._lkg_path)
        except ConfigError as e:
            log.error("ignoring the last-known-good file: %s", e)
            saved = None
        if saved is not None:
            self._set(saved)
            self._ready.set()
            log.info("serving the last-known-good snapshot", extra={"version": saved.version})
        self._task = asyncio.create_task(self._run(), name="config-watcher")

    async def wait_until_ready(self) -> ExecutorConfig:
        """The configuration in force once it is whole: the control plane's initial state
        received (every tenant this executor may serve), or a last-known-good file loaded
        at start (served while the control plane is away)."""
        await self._ready.wait()
        assert self._current is not None
        return self._current

    async def wait_for(
        self, predicate: Callable[[ExecutorConfig], bool], timeout: float | None
    ) -> ExecutorConfig:
        """The configuration in force once ``predicate`` holds for it."""
        async with asyncio.timeout(timeout):
            while self._current is None or not predicate(self._current):
                self._version_seen.clear()
                await self._version_seen.wait()
            return self._current

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _set(self, config: ExecutorConfig) -> None:
        self._current = config
        self._version_seen.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async for _ in self._session():
                    attempt = 0  # a snapshot went through: the link works
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "config stream ended: %s %s",
                    e.code().name,
                    e.details(),
                    extra={"code": e.code().name},
                )
            finally:
                self.connected = False
            delay = self._backoff.delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self) -> AsyncIterator[str]:
        """One Delta ADS stream; yields the version in force after each burst of
        responses it applied (and acknowledged)."""
        call = self._stub.DeltaAggregatedResources(metadata=self._metadata)
        held = self._current.tenant_versions() if self._current else {}
        inbox: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        return
                    assert isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
                    inbox.put_nowait(response)
            finally:
                inbox.put_nowait(None)

        reader = asyncio.create_task(read(), name="config-reader")
        try:
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(
                    node=self._node,
                    type_url=TENANT_CONFIGURATION_URL,
                    initial_resource_versions=held,
                )
            )
            while True:
                first = await inbox.get()
                if first is None:
                    await reader  # raises the stream's error, if it ended with one
                    return
                self.connected = True
                # Answer a burst at once: apply every response that has arrived, keep the
                # result on disk, then acknowledge them all.
                burst = [first]
                while not inbox.empty():
                    item = inbox.get_nowait()
                    if item is None:
                        inbox.put_nowait(None)
                        break
                    burst.append(item)
                config = self._current or ExecutorConfig()
                answers = []
                whole = False
                for response in burst:
                    config, answer = self._apply(config, response)
                    answers.append(answer)
                    # No resources and no removals: the end of the initial state.
                    whole = whole or not (response.resources or response.removed_resources)
                if whole and self._current is None:
                    self._set(config)  # an executor with no tenants yet is configured too
                if config is not self._current:
                    # On disk before it is acknowledged: an acknowledged configuration
                    # survives a restart.
                    await lkg.save(self._lkg_path, config)
                    self._set(config)
                for answer in answers:
                    await call.write(answer)
                if whole:
                    self._ready.set()
                yield config.version
        finally:
            call.cancel()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    def _apply(
        self, config: ExecutorConfig, response: discovery_pb2.DeltaDiscoveryResponse
    ) -> tuple[ExecutorConfig, discovery_pb2.DeltaDiscoveryRequest]:
        """``config`` with one response applied, and its ACK; or ``config`` as it was and
        the response's NACK, saying why. A response holds one tenant's configuration (or
        removals), so a NACK never holds back another tenant's."""
        answer = discovery_pb2.DeltaDiscoveryRequest(
            node=self._node, type_url=TENANT_CONFIGURATION_URL, response_nonce=response.nonce
        )
        try:
            if response.type_url != TENANT_CONFIGURATION_URL:
                raise ConfigError(f"unexpected resource type {response.type_url[:200]}")
            if not response.resources and not response.removed_resources:
                return config, answer  # the end of the initial state: nothing to apply
            updated = {}
            for resource in response.resources:
                bundle = discovery_pb2_ph.TenantConfiguration()
                if not resource.resource.Unpack(bundle):
                    raise ConfigError(f"{resource.name[:100]} is not a TenantConfiguration")
                if bundle.name != resource.name or bundle.version != resource.version:
                    raise ConfigError(f"{resource.name[:100]} does not match its content")
                tenant_config = parse_tenant(bundle)
                updated[tenant_config.tenant] = tenant_config
            removed = [t for t in map(tenant_of, response.removed_resources) if t]
            candidate = config.changed(updated, removed)
            if self._check is not None:
                self._check(candidate)
        except ConfigError as e:
            names = [r.name for r in response.resources] or list(response.removed_resources)
            log.error(
                "rejecting configuration %s: %s",
                ", ".join(names)[:200],
                e,
                extra={"version": response.system_version_info},
            )
            answer.error_detail.CopyFrom(
                status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e)[:4000])
            )
            return config, answer
        log.info(
            "configuration applied",
            extra={"tenants": sorted(updated), "removed": removed, "version": candidate.version},
        )
        return candidate, answer
