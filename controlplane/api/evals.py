"""EvalService."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.context import principal
from controlplane.api.endpoint import ResourceEndpoint
from controlplane.api.eval_convert import (
    report_from_proto,
    report_to_proto,
    suite_from_proto,
    suite_to_proto,
    tenant_of,
)
from controlplane.evals.service import EvalReports
from controlplane.registry import kinds
from controlplane.registry.service import Registry
from pilothouse.v1 import eval_pb2 as pb
from pilothouse.v1 import eval_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class EvalServicer(eval_pb2_grpc.EvalServiceServicer):
    def __init__(self, registry: Registry, reports: EvalReports) -> None:
        self._suites = ResourceEndpoint(
            registry, kinds.EVAL_SUITE, suite_to_proto, suite_from_proto
        )
        self._reports = reports

    async def GetEvalSuite(
        self, request: pb.GetEvalSuiteRequest, context: Ctx
    ) -> pb.GetEvalSuiteResponse:
        return pb.GetEvalSuiteResponse(eval_suite=await self._suites.get(request.name))

    async def ListEvalSuites(
        self, request: pb.ListEvalSuitesRequest, context: Ctx
    ) -> pb.ListEvalSuitesResponse:
        suites, token = await self._suites.list(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListEvalSuitesResponse(eval_suites=suites, next_page_token=token)

    async def CreateEvalSuite(
        self, request: pb.CreateEvalSuiteRequest, context: Ctx
    ) -> pb.CreateEvalSuiteResponse:
        suite = await self._suites.create(request.parent, request.eval_suite_id, request.eval_suite)
        return pb.CreateEvalSuiteResponse(eval_suite=suite)

    async def UpdateEvalSuite(
        self, request: pb.UpdateEvalSuiteRequest, context: Ctx
    ) -> pb.UpdateEvalSuiteResponse:
        suite = await self._suites.update(request.eval_suite, request.update_mask)
        return pb.UpdateEvalSuiteResponse(eval_suite=suite)

    async def DeleteEvalSuite(
        self, request: pb.DeleteEvalSuiteRequest, context: Ctx
    ) -> pb.DeleteEvalSuiteResponse:
        await self._suites.delete(request.name, request.etag)
        return pb.DeleteEvalSuiteResponse()

    async def CreateEvalReport(
        self, request: pb.CreateEvalReportRequest, context: Ctx
    ) -> pb.CreateEvalReportResponse:
        report, created = await self._reports.create(
            principal(), request.parent, request.report_id, report_from_proto(request.report)
        )
        return pb.CreateEvalReportResponse(
            report=report_to_proto(tenant_of(report), report), created=created
        )

    async def GetEvalReport(
        self, request: pb.GetEvalReportRequest, context: Ctx
    ) -> pb.GetEvalReportResponse:
        report = await self._reports.get(principal(), request.name)
        return pb.GetEvalReportResponse(report=report_to_proto(tenant_of(report), report))

    async def ListEvalReports(
        self, request: pb.ListEvalReportsRequest, context: Ctx
    ) -> pb.ListEvalReportsResponse:
        reports, token = await self._reports.list(
            principal(),
            request.parent,
            suite=request.suite,
            prompt_version=request.prompt_version,
            size=request.page_size,
            token=request.page_token,
        )
        return pb.ListEvalReportsResponse(
            reports=[report_to_proto(tenant_of(r), r) for r in reports], next_page_token=token
        )
