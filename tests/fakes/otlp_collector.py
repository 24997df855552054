"""A fake OpenTelemetry collector on 127.0.0.1: it takes OTLP/gRPC exports of traces and
metrics, as a real collector does, and counts what arrived."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class FakeCollector:
    spans: int = 0
    span_names: set[str] = field(default_factory=set)
    metric_exports: int = 0
    port: int = 0
    _server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeCollector:
        collector = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        collector.spans += len(scope.spans)
                        collector.span_names |= {s.name.split(" ")[0] for s in scope.spans}
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            async def Export(
                self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
            ) -> metrics_service_pb2.ExportMetricsServiceResponse:
                collector.metric_exports += 1
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
