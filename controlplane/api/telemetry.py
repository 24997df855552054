"""TelemetryService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.context import principal
from controlplane.api.telemetry_convert import (
    batch_from_proto,
    freshness_to_proto,
    run_summary_to_proto,
    usage_row_to_proto,
)
from controlplane.errors import InvalidArgument
from controlplane.registry import names
from controlplane.telemetry.service import Intake, Telemetry
from pilothouse import wellknown
from pilothouse.v1 import telemetry_pb2 as pb
from pilothouse.v1 import telemetry_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]

PIPELINE = 8
"""Batches of one stream being ingested at once, at most."""

DIMENSIONS = {
    pb.USAGE_DIMENSION_TENANT: "tenant",
    pb.USAGE_DIMENSION_AGENT: "agent",
    pb.USAGE_DIMENSION_MODEL: "model",
    pb.USAGE_DIMENSION_PROMPT_VERSION: "prompt_version",
    pb.USAGE_DIMENSION_VARIANT: "variant",
    pb.USAGE_DIMENSION_PROVIDER: "provider",
    pb.USAGE_DIMENSION_TOOL: "tool",
    pb.USAGE_DIMENSION_RUN: "run_id",
}


def _parent_tenant(parent: str) -> str:
    """The tenant of a ``tenants/{tenant}`` parent ("-" for every tenant)."""
    tenant = names.tenant_of(parent)
    if tenant is None or parent != f"tenants/{tenant}":
        raise InvalidArgument.of("parent", "must be tenants/{tenant} or tenants/-")
    return tenant


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    async def StreamEvents(
        self, request_iterator: AsyncIterator[pb.StreamEventsRequest], context: Ctx
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        """Batches are ingested as they arrive, several at once (so that a database
        commits them together), and acknowledged in the order they came."""
        caller = principal()
        ingesting: asyncio.Queue[tuple[int, asyncio.Task[Intake]] | Exception | None] = (
            asyncio.Queue(maxsize=PIPELINE)
        )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if not request.executor:
                        raise InvalidArgument.of(
                            "executor", "is required: the sender's xDS node id"
                        )
                    batch, tenants = batch_from_proto(request)
                    for tenant in sorted(tenants):
                        caller.require_tenant(tenant)
                    task = asyncio.create_task(self._telemetry.ingest(batch))
                    await ingesting.put((request.batch_sequence, task))
            except Exception as e:  # the stream fails with it, after what came before
                await ingesting.put(e)
            else:
                await ingesting.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await ingesting.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                sequence, task = item
                intake = await task
                yield pb.StreamEventsResponse(
                    acked_batch_sequence=sequence,
                    duplicates=intake.duplicates,
                    rejected=[pb.RejectedEvent(id=r.id, reason=r.reason) for r in intake.rejected],
                )
        finally:
            reader.cancel()

    async def QueryUsage(
        self, request: pb.QueryUsageRequest, context: Ctx
    ) -> pb.QueryUsageResponse:
        tenant = _parent_tenant(request.parent)
        group_by = []
        for i, dimension in enumerate(request.group_by):
            if dimension not in DIMENSIONS:
                raise InvalidArgument.of(f"group_by[{i}]", "is not a usage dimension")
            group_by.append(DIMENSIONS[dimension])
        rows, token, freshness = await self._telemetry.query_usage(
            principal(),
            tenant,
            start=wellknown.timestamp(request.start_time, "start_time")
            if request.HasField("start_time")
            else None,
            end=wellknown.timestamp(request.end_time, "end_time")
            if request.HasField("end_time")
            else None,
            group_by=group_by,
            bucket=wellknown.duration(request.bucket, "bucket")
            if request.HasField("bucket")
            else None,
            page_size_=request.page_size,
            page_token=request.page_token,
        )
        return pb.QueryUsageResponse(
            rows=[usage_row_to_proto(r) for r in rows],
            next_page_token=token,
            freshness=freshness_to_proto(freshness),
        )

    async def GetRunSummary(
        self, request: pb.GetRunSummaryRequest, context: Ctx
    ) -> pb.GetRunSummaryResponse:
        tenant, run_id = names.parse_run(request.name, "name")
        summary, freshness = await self._telemetry.get_run(tenant, run_id)
        return pb.GetRunSummaryResponse(
            run=run_summary_to_proto(summary), freshness=freshness_to_proto(freshness)
        )

    async def ListRunSummaries(
        self, request: pb.ListRunSummariesRequest, context: Ctx
    ) -> pb.ListRunSummariesResponse:
        tenant = _parent_tenant(request.parent)
        summaries, token, freshness = await self._telemetry.list_runs(
            principal(), tenant, page_size_=request.page_size, page_token=request.page_token
        )
        return pb.ListRunSummariesResponse(
            runs=[run_summary_to_proto(s) for s in summaries],
            next_page_token=token,
            freshness=freshness_to_proto(freshness),
        )
