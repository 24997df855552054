"""ToolService."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api import _convert
from controlplane.api.endpoint import ResourceEndpoint
from controlplane.registry import kinds
from controlplane.registry.service import Registry
from pilothouse.v1 import tool_pb2 as pb
from pilothouse.v1 import tool_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class ToolServicer(tool_pb2_grpc.ToolServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._tools = ResourceEndpoint(
            registry, kinds.TOOL, _convert.tool_to_proto, _convert.tool_from_proto
        )

    async def GetTool(self, request: pb.GetToolRequest, context: Ctx) -> pb.GetToolResponse:
        return pb.GetToolResponse(tool=await self._tools.get(request.name))

    async def ListTools(self, request: pb.ListToolsRequest, context: Ctx) -> pb.ListToolsResponse:
        tools, token = await self._tools.list(request.parent, request.page_size, request.page_token)
        return pb.ListToolsResponse(tools=tools, next_page_token=token)

    async def CreateTool(
        self, request: pb.CreateToolRequest, context: Ctx
    ) -> pb.CreateToolResponse:
        tool = await self._tools.create(request.parent, request.tool_id, request.tool)
        return pb.CreateToolResponse(tool=tool)

    async def UpdateTool(
        self, request: pb.UpdateToolRequest, context: Ctx
    ) -> pb.UpdateToolResponse:
        return pb.UpdateToolResponse(
            tool=await self._tools.update(request.tool, request.update_mask)
        )

    async def DeleteTool(
        self, request: pb.DeleteToolRequest, context: Ctx
    ) -> pb.DeleteToolResponse:
        await self._tools.delete(request.name, request.etag)
        return pb.DeleteToolResponse()
