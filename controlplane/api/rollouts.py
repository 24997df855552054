"""RolloutService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.context import principal
from controlplane.api.rollout_convert import rollout_from_proto, view_to_proto
from controlplane.rollouts.service import Rollouts
from pilothouse.v1 import rollout_pb2 as pb
from pilothouse.v1 import rollout_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class RolloutServicer(rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, rollouts: Rollouts) -> None:
        self._rollouts = rollouts

    async def CreateRollout(
        self, request: pb.CreateRolloutRequest, context: Ctx
    ) -> pb.CreateRolloutResponse:
        view = await self._rollouts.create(
            principal(), request.parent, request.rollout_id, rollout_from_proto(request.rollout)
        )
        return pb.CreateRolloutResponse(rollout=view_to_proto(view))

    async def GetRollout(
        self, request: pb.GetRolloutRequest, context: Ctx
    ) -> pb.GetRolloutResponse:
        view = await self._rollouts.get(principal(), request.name)
        return pb.GetRolloutResponse(rollout=view_to_proto(view))

    async def ListRollouts(
        self, request: pb.ListRolloutsRequest, context: Ctx
    ) -> pb.ListRolloutsResponse:
        views, token = await self._rollouts.list_page(
            principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListRolloutsResponse(
            rollouts=[view_to_proto(v) for v in views], next_page_token=token
        )

    async def PauseRollout(
        self, request: pb.PauseRolloutRequest, context: Ctx
    ) -> pb.PauseRolloutResponse:
        view = await self._rollouts.pause(principal(), request.name, request.reason)
        return pb.PauseRolloutResponse(rollout=view_to_proto(view))

    async def ResumeRollout(
        self, request: pb.ResumeRolloutRequest, context: Ctx
    ) -> pb.ResumeRolloutResponse:
        view = await self._rollouts.resume(principal(), request.name, request.reason)
        return pb.ResumeRolloutResponse(rollout=view_to_proto(view))

    async def PromoteRollout(
        self, request: pb.PromoteRolloutRequest, context: Ctx
    ) -> pb.PromoteRolloutResponse:
        view = await self._rollouts.promote(principal(), request.name, request.reason)
        return pb.PromoteRolloutResponse(rollout=view_to_proto(view))

    async def AbortRollout(
        self, request: pb.AbortRolloutRequest, context: Ctx
    ) -> pb.AbortRolloutResponse:
        view = await self._rollouts.abort(principal(), request.name, request.reason)
        return pb.AbortRolloutResponse(rollout=view_to_proto(view))

    async def WatchRollout(
        self, request: pb.WatchRolloutRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchRolloutResponse]:
        async for view in self._rollouts.watch(principal(), request.name):
            yield pb.WatchRolloutResponse(rollout=view_to_proto(view))
