"""Where traces and metrics go: OTLP over gRPC when the standard ``OTEL_*`` variables
say so, and nowhere otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def providers_from_environment(
    env: Mapping[str, str], *, service: str, instance: str
) -> tuple[TracerProvider | None, MeterProvider | None]:
    """Providers exporting by OTLP/gRPC to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the
    signal's own ``…_TRACES_ENDPOINT``/``…_METRICS_ENDPOINT``); None for a signal with no
    endpoint, whose ``OTEL_…_EXPORTER`` is ``none``, or with ``OTEL_SDK_DISABLED=true``.
    The exporters read the other ``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout,
    certificates) themselves; ``OTEL_RESOURCE_ATTRIBUTES`` adds to the resource."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None, None
    exporters = _otlp_exporters()
    common = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    resource = Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME") or service, "service.instance.id": instance}
    )
    tracer_provider = None
    if (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or common) and env.get(
        "OTEL_TRACES_EXPORTER", "otlp"
    ) != "none":
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(exporters[0]()))
    meter_provider = None
    if (env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or common) and env.get(
        "OTEL_METRICS_EXPORTER", "otlp"
    ) != "none":
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(exporters[1]())]
        )
    return tracer_provider, meter_provider


def _otlp_exporters() -> tuple[Any, Any]:
    """The OTLP/gRPC exporter classes, imported only when export is configured."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        # xds-protos installs an older copy of the OpenTelemetry protos over
        # opentelemetry-proto's when it is installed after it.
        raise SystemExit(
            f"OTLP export is configured but cannot load ({e}); reinstall the protos with "
            "'pip install --force-reinstall --no-deps opentelemetry-proto'"
        ) from e
    return OTLPSpanExporter, OTLPMetricExporter
