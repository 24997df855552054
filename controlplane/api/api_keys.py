"""ApiKeyService."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api import _convert
from controlplane.api.context import principal
from controlplane.auth.api_keys import ApiKeys
from controlplane.errors import InvalidArgument
from controlplane.registry import names
from pilothouse import wellknown
from pilothouse.v1 import api_key_pb2 as pb
from pilothouse.v1 import api_key_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


def _key_id(name: str, field: str) -> str:
    prefix = "apiKeys/"
    if not name.startswith(prefix) or not name[len(prefix) :]:
        raise InvalidArgument.of(field, f"{name!r} is not an API key name (apiKeys/{{api_key}})")
    return name[len(prefix) :]


class ApiKeyServicer(api_key_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, api_keys: ApiKeys) -> None:
        self._keys = api_keys

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Ctx
    ) -> pb.CreateApiKeyResponse:
        m = request.api_key
        tenant = names.parse_tenant(m.tenant, "api_key.tenant") if m.tenant else None
        key, secret = await self._keys.create(
            principal(),
            display_name=m.display_name,
            role=_convert.role_from_proto(m.role),
            tenant=tenant,
            expire_time=wellknown.timestamp(m.expire_time, "api_key.expire_time")
            if m.HasField("expire_time")
            else None,
            scopes=tuple(m.scopes),
        )
        return pb.CreateApiKeyResponse(api_key=_convert.api_key_to_proto(key), secret=secret)

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Ctx) -> pb.GetApiKeyResponse:
        key = await self._keys.get(principal(), _key_id(request.name, "name"))
        return pb.GetApiKeyResponse(api_key=_convert.api_key_to_proto(key))

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Ctx
    ) -> pb.ListApiKeysResponse:
        tenant = names.parse_tenant(request.tenant, "tenant") if request.tenant else None
        keys, token = await self._keys.list_keys(
            principal(), size=request.page_size, token=request.page_token, tenant=tenant
        )
        return pb.ListApiKeysResponse(
            api_keys=[_convert.api_key_to_proto(k) for k in keys], next_page_token=token
        )

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: Ctx
    ) -> pb.DeleteApiKeyResponse:
        await self._keys.delete(principal(), _key_id(request.name, "name"))
        return pb.DeleteApiKeyResponse()
