"""Traces and metrics of runs with OpenTelemetry, after the GenAI semantic conventions
(version ``SEMCONV_VERSION``): an ``invoke_agent {agent}`` span per run on an executor,
a ``chat {model}`` span per model call and an ``execute_tool {tool}`` span per tool
call, with ``pilothouse.*`` attributes for what the conventions do not cover (tenant,
prompt version, budget left, guardrail decisions); the metrics
``gen_ai.client.token.usage`` and ``gen_ai.client.operation.duration`` with the
conventions' bucket boundaries, and run, queue, quota and outbox metrics.

Names and numbers only: no prompt, completion, tool argument or tool result text.

Nothing is exported unless configured: ``from_environment`` builds OTLP exporters only
when an ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variable is set (and ``OTEL_SDK_DISABLED`` is
not true); otherwise the API's no-op providers make every span and measurement free.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dataplane.guardrails import pii
from dataplane.models.gateway import GatewayResult
from dataplane.models.types import ChatMessage, ChatRequest
from dataplane.telemetry.records import provider_name
from pilothouse.v1 import model_pb2, tool_pb2

SEMCONV_VERSION = "1.37.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# The GenAI conventions' advised bucket boundaries.
TOKEN_BUCKETS = [
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
]
DURATION_BUCKETS = [
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
]

PROVIDERS = {"openai": "openai", "scripted": "pilothouse.scripted"}
"""Model providers by the names the conventions give them (``gen_ai.provider.name``)."""

W3C = TraceContextTextMapPropagator()


def trace_headers(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The W3C trace context (``traceparent``, ``tracestate``) of a call's metadata."""
    return {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in metadata
        if k in ("traceparent", "tracestate")
    }


def _from_api(provider: object) -> bool:
    """A provider of the OpenTelemetry API package itself: a proxy or a no-op."""
    return type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))


class Tracing:
    """The executor's tracer and instruments, from the given providers or the global
    ones (no-ops unless an SDK was installed)."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        tracers = tracer_provider or trace.get_tracer_provider()
        meters = meter_provider or metrics.get_meter_provider()
        self.recording = not (_from_api(tracers) and _from_api(meters))
        """Whether spans or measurements go anywhere: the API's own providers (its
        proxies and no-ops, what a process has until an SDK is installed) record
        nothing, and then a call's span and metrics are left out altogether."""
        self.tracer = tracers.get_tracer("pilothouse.executor", schema_url=SCHEMA_URL)
        meter = meters.get_meter("pilothouse.executor", schema_url=SCHEMA_URL)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used by model calls",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of model calls",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.runs = meter.create_counter(
            "pilothouse.runs", unit="{run}", description="Runs that stopped, by stop reason"
        )
        self.queue_duration = meter.create_histogram(
            "pilothouse.run.queue.duration",
            unit="s",
            description="How long runs waited for an executor",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.quota_refusals = meter.create_counter(
            "pilothouse.quota.refusals",
            unit="{refusal}",
            description="Runs and model calls a tenant's quota refused, by limit",
        )
        self.guardrail_trips = meter.create_counter(
            "pilothouse.guardrail.trips",
            unit="{trip}",
            description="Guardrails that stopped a run, by guardrail",
        )
        self._meter = meter

    def observe_outbox(self, backlog: Callable[[], tuple[int, float]]) -> None:
        """Report the outbox: events waiting, and the age in seconds of the oldest."""

        def events(_options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(backlog()[0])

        def age(_options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(backlog()[1])

        self._meter.create_observable_gauge(
            "pilothouse.outbox.events",
            [events],
            unit="{event}",
            description="Telemetry events waiting in the outbox for the control plane",
        )
        self._meter.create_observable_gauge(
            "pilothouse.outbox.oldest.age",
            [age],
            unit="s",
            description="Age of the oldest event waiting in the outbox",
        )

    @contextlib.contextmanager
    def run_span(
        self, agent: str, tenant: str, run_id: str, carrier: Mapping[str, str]
    ) -> Iterator[Span]:
        """The span of a run's time on this executor, a child of the trace context the
        run was started under (``carrier``: its W3C headers)."""
        agent_id = agent.rsplit("/", 1)[-1]
        with self.tracer.start_as_current_span(
            f"invoke_agent {agent_id}",
            context=W3C.extract(dict(carrier)),
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": agent_id,
                "gen_ai.agent.id": agent,
                "pilothouse.tenant": tenant,
                "pilothouse.run.id": run_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    @contextlib.contextmanager
    def model_call(
        self, model: model_pb2.Model | None, request: ChatRequest
    ) -> Iterator[ModelCallTrace]:
        """A ``chat`` span around a model call to ``model`` (the route's first; the
        gateway may answer from another, which the answer then names)."""
        provider = PROVIDERS.get(provider_name(model), "") if model is not None else ""
        request_model = (model.provider_model or model.name) if model is not None else ""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": request_model,
        }
        if request.max_output_tokens:
            attributes["gen_ai.request.max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.top_p is not None:
            attributes["gen_ai.request.top_p"] = request.top_p
        with self.tracer.start_as_current_span(
            f"chat {request_model}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield ModelCallTrace(self, span, provider, request_model, time.perf_counter())

    @contextlib.contextmanager
    def tool_call(self, tool: tool_pb2.Tool, name: str, call_id: str) -> Iterator[Span]:
        """An ``execute_tool`` span around a tool call (``name``: as the model calls it)."""
        with self.tracer.start_as_current_span(
            f"execute_tool {name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call_id,
                "gen_ai.tool.type": "function"
                if tool.kind == tool_pb2.TOOL_KIND_BUILTIN
                else "extension",
                "pilothouse.tool": tool.name,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def failed(self, span: Span, error_type: str, description: str = "") -> None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, description))


class ModelCallTrace:
    """What a model call's span and metrics learn once it answers or fails."""

    def __init__(
        self, tracing: Tracing, span: Span, provider: str, request_model: str, started: float
    ) -> None:
        self._tracing = tracing
        self.span = span
        self._base = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": request_model,
        }
        self._started = started

    def answered(self, result: GatewayResult) -> None:
        answer = result.result
        response_model = answer.model or result.model.provider_model or result.model.name
        span = self.span
        span.set_attribute("gen_ai.provider.name", PROVIDERS.get(provider_name(result.model), ""))
        span.set_attribute("gen_ai.response.model", response_model)
        if answer.response_id:
            span.set_attribute("gen_ai.response.id", answer.response_id)
        span.set_attribute("gen_ai.response.finish_reasons", [answer.finish_reason])
        span.set_attribute("gen_ai.usage.input_tokens", answer.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", answer.usage.output_tokens)
        span.set_attribute("pilothouse.model", result.model.name)
        span.set_attribute("pilothouse.cost_usd", str(result.cost))
        span.set_attribute("pilothouse.attempts", result.attempts)
        labels = {**self._base, "gen_ai.response.model": response_model}
        tokens = self._tracing.token_usage
        tokens.record(answer.usage.input_tokens, {**labels, "gen_ai.token.type": "input"})
        tokens.record(answer.usage.output_tokens, {**labels, "gen_ai.token.type": "output"})
        self._tracing.operation_duration.record(time.perf_counter() - self._started, labels)

    def failed(self, error: Exception) -> None:
        status = getattr(error, "status", None)
        kind = str(status) if status else type(error).__name__
        self._tracing.failed(self.span, kind)
        self._tracing.operation_duration.record(
            time.perf_counter() - self._started, {**self._base, "error.type": kind}
        )


_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


def run_trace_context(headers: Mapping[str, str]) -> dict[str, str]:
    """The trace context a run is started in: the caller's (valid W3C headers), or a
    trace of its own."""
    parent = headers.get("traceparent", "").strip().lower()
    if not _TRACEPARENT.match(parent):
        return new_trace_context()
    context = {"traceparent": parent}
    state = headers.get("tracestate", "")
    if state and len(state) <= 512:
        context["tracestate"] = state
    return context


MAX_CAPTURED = 16 * 1024
"""Characters of captured content kept per attribute."""


def captured(text: str) -> str:
    """Content for a span: personal data and secrets redacted, cut to a size. Cut before
    the scan too (with room for a secret that straddles the cut), so that the work is
    bounded whatever the content's size."""
    return pii.redact(text[: MAX_CAPTURED + 1024])[:MAX_CAPTURED]


def capture_messages(span: Span, messages: Iterable[ChatMessage], answer: ChatMessage) -> None:
    """Put a model call's messages and answer on its span (for a tenant that captures
    content), redacted."""
    span.set_attribute(
        "gen_ai.input.messages", captured(json.dumps([_message(m) for m in messages]))
    )
    span.set_attribute("gen_ai.output.messages", captured(json.dumps([_message(answer)])))


def _message(m: ChatMessage) -> dict[str, Any]:
    """A message as the GenAI conventions shape it."""
    parts: list[dict[str, Any]] = []
    if m.role == "tool":
        parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": m.content})
    elif m.content:
        parts.append({"type": "text", "content": m.content})
    parts += [
        {"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments}
        for c in m.tool_calls
    ]
    return {"role": m.role, "parts": parts}


def new_trace_context() -> dict[str, str]:
    """W3C headers of a fresh trace, for a run started without one."""
    trace_id = secrets.randbits(128) or 1
    span_id = secrets.randbits(64) or 1
    return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01"}


def trace_id_of(carrier: Mapping[str, str]) -> str:
    """The trace id (32 hex digits) in W3C headers; "" when there is none."""
    parts = carrier.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
