"""The Aggregated Discovery Service for executors: Delta xDS, one resource per tenant.

This module is the gRPC edge: it turns requests into ``discovery.delta.Request`` values,
drives one ``DeltaSession`` per stream (the protocol's rules live there) and encodes its
responses. A tenant's configuration is packed once per version into a serialised
``Resource`` and shared by every stream due it (a byte-bounded cache, so a large tenant's
versions are not kept without limit). A key confined to a tenant sees only that tenant.
State of the World is not served: its one response per type held every tenant, so one
tenant's oversized or rejected configuration stopped every tenant's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2, discovery_pb2
from google.protobuf.message import Message

from controlplane.api import _convert, rollout_convert
from controlplane.api.context import principal
from controlplane.discovery.delta import (
    DeltaSession,
    ProtocolError,
    Request,
    Response,
    rejection,
)
from controlplane.discovery.executors import ExecutorRegistry
from controlplane.discovery.publisher import SnapshotPublisher
from controlplane.discovery.snapshot import KIND_ORDER, Snapshot
from controlplane.errors import InvalidArgument
from controlplane.lru import LruCache
from controlplane.registry.resources import Record
from pilothouse.configuration import TENANT_CONFIGURATION_URL, resource_name
from pilothouse.kinds import DELIVERED, ResourceKind
from pilothouse.v1 import discovery_pb2 as discovery_pb2_ph

log = logging.getLogger("pilothouse.discovery")

ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name


def to_proto(kind: ResourceKind) -> Callable[[Record[Any]], Message]:
    """A kind's converter to its message: ``{field}_to_proto`` of the API's converters
    (a delivered kind without one fails here, at start-up)."""
    name = f"{kind.field}_to_proto"
    for module in (_convert, rollout_convert):
        found = getattr(module, name, None)
        if found is not None:
            return found  # type: ignore[no-any-return]
    raise LookupError(f"no converter {name} for {kind.name}")


_TO_PROTO: dict[str, Callable[[Record[Any]], Message]] = {
    kind.name: to_proto(kind) for kind in DELIVERED
}
"""Each delivered kind's converter to its message."""


class TenantBundles:
    """Each tenant's configuration at a version as a serialised xDS ``Resource`` named
    ``tenants/{tenant}``, made once and shared by every stream."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._cache: LruCache[tuple[str, str], bytes] = LruCache(
            100_000, max_bytes=max_bytes, size=len
        )

    @property
    def cached_bytes(self) -> int:
        return self._cache.bytes

    def encode(self, snapshot: Snapshot, tenant: str, version: str) -> bytes:
        return self._cache.get_or_make(
            (tenant, version), functools.partial(self._pack, snapshot, tenant, version)
        )

    @staticmethod
    def _pack(snapshot: Snapshot, tenant: str, version: str) -> bytes:
        config = snapshot.tenant(tenant)
        assert config is not None and config.version == version
        bundle = discovery_pb2_ph.TenantConfiguration(name=resource_name(tenant), version=version)
        for kind in KIND_ORDER:
            for record in config.resources[kind]:
                bundle.resources.add().Pack(_TO_PROTO[kind](record))
        resource = discovery_pb2.Resource(name=bundle.name, version=version)
        resource.resource.Pack(bundle)
        return bytes(resource.SerializeToString())


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded: appended to a serialised message, it is a field
    of that message (so a shared serialised resource goes into many responses as it is)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_RESOURCES, _NONCE, _REMOVED = 2, 5, 6
"""Field numbers of DeltaDiscoveryResponse."""


def add_to_server(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    """Serve ADS; delta responses come already serialised, so they go out as they are."""
    delta: grpc.RpcMethodHandler[discovery_pb2.DeltaDiscoveryRequest, bytes] = (
        grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
        )
    )
    sotw: grpc.RpcMethodHandler[discovery_pb2.DiscoveryRequest, bytes] = (
        grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
        )
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ADS_SERVICE,
                {"DeltaAggregatedResources": delta, "StreamAggregatedResources": sotw},
            ),
        )
    )


class _Ended:
    """The client's requests ended."""


class _Newer:
    """A newer snapshot is published."""


ENDED, NEWER = _Ended(), _Newer()


class _Status:
    """Callbacks of the protocol machine, into the executor registry."""

    def __init__(self, executors: ExecutorRegistry) -> None:
        self._executors = executors

    def acked(self, node: str, version: str) -> None:
        self._executors.record_ack(node, version)

    def nacked(self, node: str, resource: str, version: str, error: str) -> None:
        log.warning(
            "executor rejected a configuration",
            extra={"node": node, "resource": resource, "version": version, "error": error},
        )
        self._executors.record_nack(node, rejection(resource, version), error[:2000])


def _request(message: discovery_pb2.DeltaDiscoveryRequest) -> Request:
    return Request(
        type_url=message.type_url,
        node_id=message.node.id,
        cluster=message.node.cluster,
        response_nonce=message.response_nonce,
        error=message.error_detail.message if message.HasField("error_detail") else None,
        initial_versions=dict(message.initial_resource_versions),
    )


class AdsServicer:
    def __init__(
        self, publisher: SnapshotPublisher, executors: ExecutorRegistry, replica: str
    ) -> None:
        self._publisher = publisher
        self._executors = executors
        self._status = _Status(executors)
        self._bundles = TenantBundles()
        self._header = discovery_pb2.DeltaDiscoveryResponse(
            type_url=TENANT_CONFIGURATION_URL,
            control_plane=base_pb2.ControlPlane(identifier=replica),
        ).SerializeToString()

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "State of the World is not served: use DeltaAggregatedResources with type "
            f"{TENANT_CONFIGURATION_URL}",
        )
        yield b""  # pragma: no cover - abort raises

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        view = principal().tenant
        session = DeltaSession(TENANT_CONFIGURATION_URL, self._status)
        # One queue carries what the stream reacts to: the client's requests, word that a
        # newer snapshot is out, and the end of the requests; so each costs one hand-off.
        inbox: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | _Ended | _Newer] = (
            asyncio.Queue()
        )

        async def read_requests() -> None:
            # Consumed in one task of its own, so the request iterator is always closed
            # by the task that runs it.
            async for request in request_iterator:
                inbox.put_nowait(request)

        def published(_: object) -> None:
            inbox.put_nowait(NEWER)

        reader = asyncio.create_task(read_requests())
        reader.add_done_callback(lambda _: inbox.put_nowait(ENDED))
        newer = self._publisher.newer()
        newer.add_done_callback(published)
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, _Ended):
                    reader.result()  # the client went away with an error: end here too
                    return
                if isinstance(item, _Newer):
                    newer = self._publisher.newer()
                    newer.add_done_callback(published)
                else:
                    try:
                        await self._receive(session, _request(item), view)
                    except ProtocolError as e:
                        raise InvalidArgument.of(e.field, str(e)) from None
                if not inbox.empty() or not session.node:
                    continue  # a burst (acknowledgements): answer once it is all read
                snapshot = self._publisher.current
                for response in session.due(snapshot.versions(view)):
                    yield self._encode(snapshot, response, view)
                session.report()
        finally:
            newer.remove_done_callback(published)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if session.node:
                self._executors.record_closed(session.node)

    async def _receive(self, session: DeltaSession, request: Request, view: str | None) -> None:
        if session.node:
            session.receive(request)
            return
        if not request.node_id:
            raise ProtocolError("node.id", "the first request must name its node")
        rejected = await self._executors.connected(request.node_id, request.cluster, view)
        session.open(request, rejected)

    def _encode(self, snapshot: Snapshot, response: Response, view: str | None) -> bytes:
        out = [self._header]
        if response.initial_state_sent:
            out.append(_field(1, snapshot.version_for(view).encode()))  # system_version_info
        if response.tenant is not None:
            out.append(_field(1, response.version.encode()))  # system_version_info
            out.append(
                _field(
                    _RESOURCES,
                    self._bundles.encode(snapshot, response.tenant, response.version),
                )
            )
        for name in response.removed:
            out.append(_field(_REMOVED, name.encode()))
        out.append(_field(_NONCE, response.nonce.encode()))
        return b"".join(out)
