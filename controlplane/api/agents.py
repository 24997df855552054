"""AgentRegistryService."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api import _convert
from controlplane.api.endpoint import ResourceEndpoint
from controlplane.registry import kinds
from controlplane.registry.service import Registry
from pilothouse.v1 import agent_pb2 as pb
from pilothouse.v1 import agent_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class AgentRegistryServicer(agent_pb2_grpc.AgentRegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._agents = ResourceEndpoint(
            registry, kinds.AGENT, _convert.agent_to_proto, _convert.agent_from_proto
        )

    async def GetAgent(self, request: pb.GetAgentRequest, context: Ctx) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=await self._agents.get(request.name))

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Ctx
    ) -> pb.ListAgentsResponse:
        agents, token = await self._agents.list(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)

    async def CreateAgent(
        self, request: pb.CreateAgentRequest, context: Ctx
    ) -> pb.CreateAgentResponse:
        agent = await self._agents.create(request.parent, request.agent_id, request.agent)
        return pb.CreateAgentResponse(agent=agent)

    async def UpdateAgent(
        self, request: pb.UpdateAgentRequest, context: Ctx
    ) -> pb.UpdateAgentResponse:
        agent = await self._agents.update(request.agent, request.update_mask)
        return pb.UpdateAgentResponse(agent=agent)

    async def DeleteAgent(
        self, request: pb.DeleteAgentRequest, context: Ctx
    ) -> pb.DeleteAgentResponse:
        await self._agents.delete(request.name, request.etag)
        return pb.DeleteAgentResponse()
