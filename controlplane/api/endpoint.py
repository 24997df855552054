"""The registry's generic operations for one kind, in protobuf terms: what every
resource servicer delegates to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from google.protobuf import field_mask_pb2

from controlplane.api.context import principal
from controlplane.registry.kinds import Kind
from controlplane.registry.resources import Record
from controlplane.registry.service import Registry

S = TypeVar("S")
M = TypeVar("M")


class ResourceEndpoint(Generic[S, M]):
    def __init__(
        self,
        registry: Registry,
        kind: Kind[S],
        to_proto: Callable[[Record[S]], M],
        from_proto: Callable[[M], S],
    ) -> None:
        self.registry = registry
        self.kind = kind
        self.to_proto = to_proto
        self.from_proto = from_proto

    async def get(self, name: str) -> M:
        return self.to_proto(await self.registry.get(principal(), self.kind, name))

    async def list(self, parent: str, page_size: int, page_token: str) -> tuple[list[M], str]:
        records, token = await self.registry.list_resources(
            principal(), self.kind, parent, page_size, page_token
        )
        return [self.to_proto(rec) for rec in records], token

    async def create(self, parent: str, id_: str, message: M) -> M:
        spec = self.from_proto(message)
        return self.to_proto(await self.registry.create(principal(), self.kind, parent, id_, spec))

    async def update(self, message: Any, mask: field_mask_pb2.FieldMask) -> M:
        spec = self.from_proto(message)
        record = await self.registry.update(
            principal(), self.kind, message.name, spec, list(mask.paths), message.etag
        )
        return self.to_proto(record)

    async def delete(self, name: str, etag: str) -> None:
        await self.registry.delete(principal(), self.kind, name, etag)
