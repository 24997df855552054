"""What a run is admitted with: the caller's request, the context it resolves to, and
the first model call written with the run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dataplane.config.snapshot import ExecutorConfig, RunUnit
from dataplane.guardrails import pii
from dataplane.models.types import ChatMessage
from dataplane.orchestrator.calls import Usage, unsettled
from dataplane.orchestrator.context import (
    AdmissionError,
    Limits,
    RunContext,
    limits,
    require_version,
    resolve,
)
from dataplane.orchestrator.decide import CallModel, Situation, decide
from dataplane.orchestrator.opening import opening
from dataplane.runstore.model import Run, RunEvent, StepCheckpoint, UnsettledModelCall
from dataplane.runstore.store import NewRun
from dataplane.telemetry.otel import run_trace_context, trace_id_of
from dataplane.telemetry.records import RunLabels
from pilothouse.v1 import agent_pb2

MAX_INPUT_BYTES = 256 * 1024
"""The largest run input accepted (UTF-8)."""


@dataclass(frozen=True)
class Admitted:
    run: Run
    created: bool
    """False: the idempotency key named a run that already existed."""
    events: list[RunEvent] | None
    """A run created just now: the events it was created with (none when queued).
    None for one that already existed."""


@dataclass(frozen=True)
class Admission:
    tenant: str
    agent: str
    input: str
    variables: dict[str, str]
    budget: agent_pb2.Budget
    idempotency_key: str | None = None
    session_id: str = ""
    user_id: str = ""
    deadline_at: datetime | None = None
    trace: dict[str, str] = field(default_factory=dict)
    """The caller's W3C trace context (``traceparent``, ``tracestate``), if it sent one."""
    prompt_version: str = ""
    """Pins the run to this version of the agent's prompt instead of assigning one (an
    eval case's run); it must be in the configuration."""
    variant: str = ""
    """With ``prompt_version``: the variant the run is recorded on."""
    key: str = ""
    """The key that started the run (apiKeys/{id})."""
    scopes: tuple[str, ...] = ()
    """The scopes that key holds: the run may call tools that require one of them."""


def admission_context(
    config: ExecutorConfig, admission: Admission, unit: RunUnit
) -> tuple[RunContext, str, dict[str, str]]:
    """The run's context, and its input and variables as the run keeps them: redacted
    when its agent's policy says so (the variables are the caller's text as much as the
    input is: neither reaches the model or the run store unredacted)."""
    if admission.prompt_version:
        require_version(config, admission.agent, admission.prompt_version)

    def resolved(variables: dict[str, str]) -> RunContext:
        return resolve(
            config,
            admission.agent,
            variables,
            unit=unit,
            pinned_version=admission.prompt_version,
            pinned_variant=admission.variant,
        )

    ctx = resolved(admission.variables)
    size = len(admission.input.encode())
    if size > MAX_INPUT_BYTES:
        raise AdmissionError("input", f"is {size} bytes; at most {MAX_INPUT_BYTES}")
    run_input, variables = admission.input, admission.variables
    if ctx.agent.guardrail_policy.redact_pii:
        run_input = pii.redact(run_input)
        redacted = {name: pii.redact(value) for name, value in variables.items()}
        if redacted != variables:
            variables = redacted
            ctx = resolved(variables)
    return ctx, run_input, variables


@dataclass(frozen=True)
class Prepared:
    """A run as admission prepared it, before it is created."""

    ctx: RunContext
    limits: Limits
    labels: RunLabels
    request: dict[str, Any]
    """What the run store keeps of the request (``Run.request``)."""


def prepare(config: ExecutorConfig, admission: Admission, run_id: str, executor: str) -> Prepared:
    unit = RunUnit(admission.tenant, admission.user_id, admission.session_id, run_id)
    ctx, run_input, variables = admission_context(config, admission, unit)
    run_limits = limits(ctx.agent, admission.budget)
    request = {
        "trace": run_trace_context(admission.trace),
        "input": run_input,
        "variables": variables,
        "key": admission.key,
        "scopes": list(admission.scopes),
        "limits": run_limits.to_dict(),
        "prompt_version": ctx.version.name,
        "variant": ctx.variant,
        "config_version": config.version,
    }
    labels = RunLabels(admission.agent, ctx.version.name, executor, ctx.variant)
    return Prepared(ctx, run_limits, labels, request)


def new_run(
    config: ExecutorConfig,
    admission: Admission,
    prepared: Prepared,
    run_id: str,
    *,
    queued: bool,
    usd_limited: bool,
) -> tuple[NewRun, StepCheckpoint | None]:
    """The run to create, and its opening checkpoint: for a run that starts here, written
    with the run, with its first model call (no write of its own); none for a queued one.
    ``usd_limited``: the tenant's quota limits its spend in USD."""
    first = first_call = None
    if not queued:
        request = prepared.request
        messages, first = opening(
            prepared.ctx,
            config.version,
            request["input"],
            prepared.labels,
            prepared.limits,
            trace_id=trace_id_of(request["trace"]),
        )
        first_call = first_model_call(config, admission, prepared, messages, usd_limited)
    new = NewRun(
        admission.tenant,
        admission.agent,
        prepared.request,
        admission.idempotency_key,
        admission.session_id,
        admission.user_id,
        admission.deadline_at,
        queued=queued,
        opening=first,
        model_call=first_call,
        id=run_id,
    )
    return new, first


def first_model_call(
    config: ExecutorConfig,
    admission: Admission,
    prepared: Prepared,
    messages: list[ChatMessage],
    usd_limited: bool,
) -> UnsettledModelCall | None:
    """The run's first model call, as its loop will decide it, to be written with the
    run (None when it will make none: its budget allows none)."""
    first = decide(
        Situation(
            config,
            prepared.ctx,
            prepared.limits,
            Usage(),
            messages,
            {},
            0,
            time.time(),
            caller_deadline=(admission.deadline_at.timestamp() if admission.deadline_at else None),
            tenant_usd_limited=usd_limited,
        )
    )
    if not isinstance(first, CallModel):
        return None
    return unsettled(first.bounds, Usage(), prepared.labels, first.step)
