"""The Aggregated Discovery Service (xDS, State of the World) for executors.

Per stream and per type URL the server keeps what it last sent (version and nonce) and
whether that response still awaits its ACK or NACK; at most one response per type is
outstanding, and a newer snapshot is sent only once every type has answered for the
current one, so the types of a stream move from snapshot to snapshot together. A request
whose nonce is not the last one sent is stale and ignored. A NACK marks the version
rejected for that node, which is then never sent to it again. A push happens only when
the version the stream would see differs from what was last sent, so nothing is pushed
when nothing changed. Every response of one snapshot carries that snapshot's version; a
key confined to a tenant sees only that tenant's resources.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from controlplane.api import _convert
from controlplane.api.context import principal
from controlplane.api.rollout_convert import rollout_to_proto
from controlplane.discovery.executors import ExecutorRegistry
from controlplane.discovery.publisher import SnapshotPublisher
from controlplane.discovery.snapshot import KIND_ORDER, Snapshot
from controlplane.errors import InvalidArgument
from controlplane.lru import LruCache
from controlplane.registry.resources import Record

log = logging.getLogger("pilothouse.discovery")

ADS_SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
TYPE_PREFIX = "type.googleapis.com/pilothouse.v1."
TYPE_URLS = tuple(TYPE_PREFIX + kind for kind in KIND_ORDER)

_TO_PROTO: dict[str, Callable[[Record[Any]], Message]] = {
    "ApiKeyDigest": _convert.api_key_digest_to_proto,
    "Tenant": _convert.tenant_to_proto,
    "QuotaPolicy": _convert.quota_policy_to_proto,
    "Tool": _convert.tool_to_proto,
    "Model": _convert.model_to_proto,
    "ModelRoute": _convert.model_route_to_proto,
    "PromptVersion": _convert.prompt_version_to_proto,
    "Prompt": _convert.prompt_to_proto,
    "Agent": _convert.agent_to_proto,
    "Rollout": rollout_to_proto,
}


class PackedResources:
    """Resources as (name, Any), packed once per tenant configuration version and shared
    by every stream that sees them."""

    def __init__(self) -> None:
        self._cache: LruCache[tuple[str, str, str], list[tuple[str, any_pb2.Any]]] = LruCache(4096)

    def for_view(
        self, snapshot: Snapshot, kind: str, tenant: str | None
    ) -> list[tuple[str, any_pb2.Any]]:
        tenants = [tenant] if tenant is not None else sorted(snapshot.tenants)
        out: list[tuple[str, any_pb2.Any]] = []
        for t in tenants:
            config = snapshot.tenants.get(t)
            if config is None:
                continue
            records = config.resources[kind]
            out += self._cache.get_or_make(
                (kind, t, config.version), functools.partial(self._pack, kind, records)
            )
        return out

    @staticmethod
    def _pack(kind: str, records: tuple[Record[Any], ...]) -> list[tuple[str, any_pb2.Any]]:
        packed = []
        for record in records:
            message = _TO_PROTO[kind](record)
            wrapped = any_pb2.Any()
            wrapped.Pack(message)
            packed.append((getattr(message, "name"), wrapped))  # noqa: B009
        return packed


_NONCE_TAG = bytes([(5 << 3) | 2])
"""Wire tag of ``DiscoveryResponse.nonce`` (field 5, length-delimited)."""


class EncodedResponses:
    """Responses serialised once per type, version and view, and shared by every stream
    that is due the same one. A stream's nonce is appended to the shared bytes: a field
    appended to a serialised message is a field of that message."""

    def __init__(self, packed: PackedResources, identity: base_pb2.ControlPlane) -> None:
        self._packed = packed
        self._identity = identity
        self._cache: LruCache[tuple[str, str, str | None, frozenset[str]], bytes] = LruCache(4096)

    def encode(
        self,
        snapshot: Snapshot,
        version: str,
        type_url: str,
        tenant: str | None,
        names: frozenset[str],
        nonce: str,
    ) -> bytes:
        body = self._cache.get_or_make(
            (type_url, version, tenant, names),
            functools.partial(self._serialise, snapshot, version, type_url, tenant, names),
        )
        encoded = nonce.encode()
        return body + _NONCE_TAG + _varint(len(encoded)) + encoded

    def _serialise(
        self,
        snapshot: Snapshot,
        version: str,
        type_url: str,
        tenant: str | None,
        names: frozenset[str],
    ) -> bytes:
        kind = type_url.removeprefix(TYPE_PREFIX)
        resources = [
            packed
            for name, packed in self._packed.for_view(snapshot, kind, tenant)
            if not names or name in names
        ]
        response = discovery_pb2.DiscoveryResponse(
            version_info=version,
            resources=resources,
            type_url=type_url,
            control_plane=self._identity,
        )
        return bytes(response.SerializeToString())


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def add_to_server(servicer: AdsServicer, server: grpc.aio.Server) -> None:
    """Serve ADS; its responses come already serialised (see EncodedResponses), so they
    go out as they are."""
    handler: grpc.RpcMethodHandler[discovery_pb2.DiscoveryRequest, bytes] = (
        grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
        )
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ADS_SERVICE, {"StreamAggregatedResources": handler}),)
    )


class _Signal(enum.Enum):
    NEWER = "a newer snapshot is published"
    ENDED = "the client's requests ended"


@dataclass
class _TypeState:
    names: frozenset[str] = frozenset()
    """Resource names subscribed to; empty means all (wildcard)."""
    sent_version: str = ""
    sent_nonce: str = ""
    outstanding: bool = False
    acked_version: str = ""


@dataclass
class _Stream:
    tenant: str | None
    node_id: str = ""
    nacked: set[str] = field(default_factory=set)
    types: dict[str, _TypeState] = field(default_factory=dict)
    reported_ack: str = ""
    round: tuple[Snapshot, str] | None = None
    """The snapshot (and its version for this stream) being delivered: every type gets
    it before any type gets a newer one, so an executor always sees whole snapshots."""


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self, publisher: SnapshotPublisher, executors: ExecutorRegistry, replica: str
    ) -> None:
        self._publisher = publisher
        self._executors = executors
        self._responses = EncodedResponses(
            PackedResources(), base_pb2.ControlPlane(identifier=replica)
        )

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        stream = _Stream(tenant=principal().tenant)
        # One queue carries what the stream reacts to: the client's requests, word that a
        # newer snapshot is out, and the end of the requests; so each costs one hand-off.
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | _Signal] = asyncio.Queue()

        async def read_requests() -> None:
            # Consumed in one task of its own, so the request iterator is always closed
            # by the task that runs it.
            async for request in request_iterator:
                inbox.put_nowait(request)

        def published(_: object) -> None:
            inbox.put_nowait(_Signal.NEWER)

        reader = asyncio.create_task(read_requests())
        reader.add_done_callback(lambda _: inbox.put_nowait(_Signal.ENDED))
        newer = self._publisher.newer()
        newer.add_done_callback(published)
        try:
            while True:
                item = await inbox.get()
                if item is _Signal.ENDED:
                    reader.result()  # the client went away with an error: end here too
                    return
                if item is _Signal.NEWER:
                    newer = self._publisher.newer()
                    newer.add_done_callback(published)
                else:
                    await self._receive(stream, item)
                if not inbox.empty():
                    continue  # a burst (a snapshot's ACKs): answer once it is all read
                for response in self._due(stream):
                    yield response
                self._report_ack(stream)
        finally:
            newer.remove_done_callback(published)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if stream.node_id:
                self._executors.record_closed(stream.node_id)

    async def _receive(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        if not stream.node_id:
            if not request.node.id:
                raise InvalidArgument.of("node.id", "the first request must name its node")
            stream.node_id = request.node.id
            stream.nacked = await self._executors.connected(request.node.id, request.node.cluster)
        if request.type_url not in TYPE_URLS:
            log.warning("unknown type requested", extra={"type_url": request.type_url})
            return
        state = stream.types.setdefault(request.type_url, _TypeState())
        if request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                return  # stale: answers a response that has been superseded
            state.outstanding = False
            if request.HasField("error_detail"):
                stream.nacked.add(state.sent_version)
                log.warning(
                    "executor rejected a snapshot",
                    extra={
                        "node": stream.node_id,
                        "version": state.sent_version,
                        "error": request.error_detail.message,
                    },
                )
                self._executors.record_nack(
                    stream.node_id, state.sent_version, request.error_detail.message
                )
            else:
                state.acked_version = request.version_info
        elif request.version_info:
            # A (re)connecting client that already holds this version needs nothing.
            state.sent_version = state.acked_version = request.version_info
        state.names = frozenset(request.resource_names)

    def _due(self, stream: _Stream) -> list[bytes]:
        if stream.round is None or not any(s.outstanding for s in stream.types.values()):
            current = self._publisher.current
            stream.round = (current, current.version_for(stream.tenant))
        snapshot, version = stream.round
        if version in stream.nacked:
            return []
        responses = []
        for type_url in TYPE_URLS:
            state = stream.types.get(type_url)
            if state is None or state.outstanding or state.sent_version == version:
                continue
            nonce = secrets.token_hex(8)
            responses.append(
                self._responses.encode(
                    snapshot, version, type_url, stream.tenant, state.names, nonce
                )
            )
            state.sent_version, state.sent_nonce, state.outstanding = version, nonce, True
        return responses

    def _report_ack(self, stream: _Stream) -> None:
        """Record the version once every watched type has acknowledged it."""
        versions = {s.acked_version for s in stream.types.values()}
        if len(versions) != 1:
            return
        (version,) = versions
        if version and version != stream.reported_ack:
            stream.reported_ack = version
            self._executors.record_ack(stream.node_id, version)
