"""The executor's xDS client: it watches every Pilothouse resource type over ADS (State of
the World), applies a snapshot once all its types have arrived and passed the checks, and
keeps serving on the last good one whatever happens to the control plane.

Every type of one push carries the snapshot's version, so the watcher gathers the
responses of a version and answers them together: all ACKs once the whole snapshot is
applied, or all NACKs (with the previous version and the reason) when it is rejected.
Disconnected, it retries with exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import code_pb2, status_pb2

from dataplane.config import lkg
from dataplane.config.snapshot import TYPE_URLS, ConfigError, ExecutorConfig, parse

log = logging.getLogger("pilothouse.executor.config")


@dataclass(frozen=True)
class Backoff:
    """Reconnection delays: exponential, capped, with full jitter."""

    initial: float = 0.2
    """Upper bound of the first wait, in seconds."""
    maximum: float = 30.0
    """Upper bound of any wait."""

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.maximum, self.initial * 2**attempt))


class ConfigWatcher:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        api_key: str,
        node_id: str,
        cluster: str,
        lkg_path: Path,
        backoff: Backoff = Backoff(),
        check: Callable[[ExecutorConfig], None] | None = None,
    ) -> None:
        """``check`` runs after the built-in checks on every snapshot; raising ConfigError
        rejects it."""
        self._stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._node = base_pb2.Node(id=node_id, cluster=cluster)
        self._lkg_path = lkg_path
        self._backoff = backoff
        self._check = check
        self._current: ExecutorConfig | None = None
        self._version_seen = asyncio.Event()
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
            log.info("serving the last-known-good snapshot", extra={"version": saved.version})
        self._task = asyncio.create_task(self._run(), name="config-watcher")

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
        """One ADS stream; yields each applied version."""
        call = self._stub.StreamAggregatedResources(metadata=self._metadata)
        have = self._current.version if self._current else ""
        pending: dict[str, dict[str, discovery_pb2.DiscoveryResponse]] = {}
        try:
            for type_url in TYPE_URLS:
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        node=self._node, type_url=type_url, version_info=have
                    )
                )
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                assert isinstance(response, discovery_pb2.DiscoveryResponse)
                self.connected = True
                round_ = pending.setdefault(response.version_info, {})
                round_[response.type_url] = response
                if len(round_) < len(TYPE_URLS):
                    continue
                del pending[response.version_info]
                config, answers = self._answer(response.version_info, round_)
                if config is not None:
                    # On disk before it is acknowledged: an ACKed snapshot survives a restart.
                    await lkg.save(self._lkg_path, config)
                    self._set(config)
                for request in answers:
                    await call.write(request)
                if config is not None:
                    yield config.version
        finally:
            call.cancel()

    def _answer(
        self, version: str, responses: dict[str, discovery_pb2.DiscoveryResponse]
    ) -> tuple[ExecutorConfig | None, list[discovery_pb2.DiscoveryRequest]]:
        """Check a complete snapshot: the configuration to put in force (None when it is
        rejected) and the ACKs, or NACKs carrying the previous version and the reason."""
        try:
            config = parse(version, {url: list(r.resources) for url, r in responses.items()})
            if self._check is not None:
                self._check(config)
        except ConfigError as e:
            previous = self._current.version if self._current else ""
            log.error("rejecting snapshot %s: %s", version, e, extra={"version": version})
            error = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(e))
            return None, [
                discovery_pb2.DiscoveryRequest(
                    node=self._node,
                    type_url=url,
                    version_info=previous,
                    response_nonce=response.nonce,
                    error_detail=error,
                )
                for url, response in responses.items()
            ]
        log.info("snapshot applied", extra={"version": version})
        return config, [
            discovery_pb2.DiscoveryRequest(
                node=self._node,
                type_url=url,
                version_info=version,
                response_nonce=response.nonce,
            )
            for url, response in responses.items()
        ]
