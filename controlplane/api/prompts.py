"""PromptService: prompts, their versions and labels."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api import _convert
from controlplane.api.context import principal
from controlplane.api.endpoint import ResourceEndpoint
from controlplane.registry import kinds
from controlplane.registry.service import Registry
from pilothouse.v1 import prompt_pb2 as pb
from pilothouse.v1 import prompt_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class PromptServicer(prompt_pb2_grpc.PromptServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._prompts = ResourceEndpoint(
            registry, kinds.PROMPT, _convert.prompt_to_proto, _convert.prompt_from_proto
        )

    async def GetPrompt(self, request: pb.GetPromptRequest, context: Ctx) -> pb.GetPromptResponse:
        return pb.GetPromptResponse(prompt=await self._prompts.get(request.name))

    async def ListPrompts(
        self, request: pb.ListPromptsRequest, context: Ctx
    ) -> pb.ListPromptsResponse:
        prompts, token = await self._prompts.list(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListPromptsResponse(prompts=prompts, next_page_token=token)

    async def CreatePrompt(
        self, request: pb.CreatePromptRequest, context: Ctx
    ) -> pb.CreatePromptResponse:
        prompt = await self._prompts.create(request.parent, request.prompt_id, request.prompt)
        return pb.CreatePromptResponse(prompt=prompt)

    async def UpdatePrompt(
        self, request: pb.UpdatePromptRequest, context: Ctx
    ) -> pb.UpdatePromptResponse:
        prompt = await self._prompts.update(request.prompt, request.update_mask)
        return pb.UpdatePromptResponse(prompt=prompt)

    async def DeletePrompt(
        self, request: pb.DeletePromptRequest, context: Ctx
    ) -> pb.DeletePromptResponse:
        await self._prompts.delete(request.name, request.etag)
        return pb.DeletePromptResponse()

    async def CreatePromptVersion(
        self, request: pb.CreatePromptVersionRequest, context: Ctx
    ) -> pb.CreatePromptVersionResponse:
        spec = _convert.prompt_version_from_proto(request.prompt_version)
        record, created = await self._registry.create_prompt_version(
            principal(), request.parent, spec
        )
        return pb.CreatePromptVersionResponse(
            prompt_version=_convert.prompt_version_to_proto(record), created=created
        )

    async def GetPromptVersion(
        self, request: pb.GetPromptVersionRequest, context: Ctx
    ) -> pb.GetPromptVersionResponse:
        record = await self._registry.get(principal(), kinds.PROMPT_VERSION, request.name)
        return pb.GetPromptVersionResponse(prompt_version=_convert.prompt_version_to_proto(record))

    async def ListPromptVersions(
        self, request: pb.ListPromptVersionsRequest, context: Ctx
    ) -> pb.ListPromptVersionsResponse:
        records, token = await self._registry.list_prompt_versions(
            principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListPromptVersionsResponse(
            prompt_versions=[_convert.prompt_version_to_proto(rec) for rec in records],
            next_page_token=token,
        )

    async def SetPromptLabel(
        self, request: pb.SetPromptLabelRequest, context: Ctx
    ) -> pb.SetPromptLabelResponse:
        record, previous = await self._registry.set_prompt_label(
            principal(), request.name, request.label, request.version, request.etag
        )
        return pb.SetPromptLabelResponse(
            prompt=_convert.prompt_to_proto(record), previous_version=previous
        )
