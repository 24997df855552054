"""ModelService: models and model routes."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api import _convert
from controlplane.api.endpoint import ResourceEndpoint
from controlplane.registry import kinds
from controlplane.registry.service import Registry
from pilothouse.v1 import model_pb2 as pb
from pilothouse.v1 import model_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._models = ResourceEndpoint(
            registry, kinds.MODEL, _convert.model_to_proto, _convert.model_from_proto
        )
        self._routes = ResourceEndpoint(
            registry,
            kinds.MODEL_ROUTE,
            _convert.model_route_to_proto,
            _convert.model_route_from_proto,
        )

    async def GetModel(self, request: pb.GetModelRequest, context: Ctx) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=await self._models.get(request.name))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Ctx
    ) -> pb.ListModelsResponse:
        models, token = await self._models.list(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListModelsResponse(models=models, next_page_token=token)

    async def CreateModel(
        self, request: pb.CreateModelRequest, context: Ctx
    ) -> pb.CreateModelResponse:
        model = await self._models.create(request.parent, request.model_id, request.model)
        return pb.CreateModelResponse(model=model)

    async def UpdateModel(
        self, request: pb.UpdateModelRequest, context: Ctx
    ) -> pb.UpdateModelResponse:
        model = await self._models.update(request.model, request.update_mask)
        return pb.UpdateModelResponse(model=model)

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: Ctx
    ) -> pb.DeleteModelResponse:
        await self._models.delete(request.name, request.etag)
        return pb.DeleteModelResponse()

    async def GetModelRoute(
        self, request: pb.GetModelRouteRequest, context: Ctx
    ) -> pb.GetModelRouteResponse:
        return pb.GetModelRouteResponse(model_route=await self._routes.get(request.name))

    async def ListModelRoutes(
        self, request: pb.ListModelRoutesRequest, context: Ctx
    ) -> pb.ListModelRoutesResponse:
        routes, token = await self._routes.list(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListModelRoutesResponse(model_routes=routes, next_page_token=token)

    async def CreateModelRoute(
        self, request: pb.CreateModelRouteRequest, context: Ctx
    ) -> pb.CreateModelRouteResponse:
        route = await self._routes.create(
            request.parent, request.model_route_id, request.model_route
        )
        return pb.CreateModelRouteResponse(model_route=route)

    async def UpdateModelRoute(
        self, request: pb.UpdateModelRouteRequest, context: Ctx
    ) -> pb.UpdateModelRouteResponse:
        route = await self._routes.update(request.model_route, request.update_mask)
        return pb.UpdateModelRouteResponse(model_route=route)

    async def DeleteModelRoute(
        self, request: pb.DeleteModelRouteRequest, context: Ctx
    ) -> pb.DeleteModelRouteResponse:
        await self._routes.delete(request.name, request.etag)
        return pb.DeleteModelRouteResponse()
