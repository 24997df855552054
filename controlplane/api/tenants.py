"""TenantService: tenants and their quota policies."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api import _convert
from controlplane.api.context import principal
from controlplane.registry.service import Registry
from pilothouse.v1 import tenant_pb2 as pb
from pilothouse.v1 import tenant_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class TenantServicer(tenant_pb2_grpc.TenantServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def GetTenant(self, request: pb.GetTenantRequest, context: Ctx) -> pb.GetTenantResponse:
        record = await self._registry.get_tenant(principal(), request.name)
        return pb.GetTenantResponse(tenant=_convert.tenant_to_proto(record))

    async def ListTenants(
        self, request: pb.ListTenantsRequest, context: Ctx
    ) -> pb.ListTenantsResponse:
        records, token = await self._registry.list_tenants(
            principal(), request.page_size, request.page_token
        )
        return pb.ListTenantsResponse(
            tenants=[_convert.tenant_to_proto(rec) for rec in records], next_page_token=token
        )

    async def CreateTenant(
        self, request: pb.CreateTenantRequest, context: Ctx
    ) -> pb.CreateTenantResponse:
        record = await self._registry.create_tenant(
            principal(), request.tenant_id, _convert.tenant_from_proto(request.tenant)
        )
        return pb.CreateTenantResponse(tenant=_convert.tenant_to_proto(record))

    async def UpdateTenant(
        self, request: pb.UpdateTenantRequest, context: Ctx
    ) -> pb.UpdateTenantResponse:
        record = await self._registry.update_tenant(
            principal(),
            request.tenant.name,
            _convert.tenant_from_proto(request.tenant),
            list(request.update_mask.paths),
            request.tenant.etag,
        )
        return pb.UpdateTenantResponse(tenant=_convert.tenant_to_proto(record))

    async def DeleteTenant(
        self, request: pb.DeleteTenantRequest, context: Ctx
    ) -> pb.DeleteTenantResponse:
        await self._registry.delete_tenant(principal(), request.name, request.etag, request.force)
        return pb.DeleteTenantResponse()

    async def GetQuotaPolicy(
        self, request: pb.GetQuotaPolicyRequest, context: Ctx
    ) -> pb.GetQuotaPolicyResponse:
        record = await self._registry.get_quota_policy(principal(), request.name)
        return pb.GetQuotaPolicyResponse(quota_policy=_convert.quota_policy_to_proto(record))

    async def UpdateQuotaPolicy(
        self, request: pb.UpdateQuotaPolicyRequest, context: Ctx
    ) -> pb.UpdateQuotaPolicyResponse:
        record = await self._registry.update_quota_policy(
            principal(),
            request.quota_policy.name,
            _convert.quota_policy_from_proto(request.quota_policy),
            list(request.update_mask.paths),
            request.quota_policy.etag,
        )
        return pb.UpdateQuotaPolicyResponse(quota_policy=_convert.quota_policy_to_proto(record))
