"""Conversion between ``pilothouse.v1`` messages and the registry's dataclasses.

The only place that knows both shapes. Values a message cannot carry faithfully (a
malformed decimal, an enum value this server does not know) are INVALID_ARGUMENT naming
the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from controlplane.auth.api_keys import ApiKey
from controlplane.auth.principal import Role
from controlplane.errors import InvalidArgument
from controlplane.registry import kinds
from controlplane.registry import resources as r
from controlplane.registry.codec import content_hash
from controlplane.registry.resources import Record
from controlplane.registry.service import resource_name
from pilothouse import wellknown
from pilothouse.v1 import (
    agent_pb2,
    api_key_pb2,
    discovery_pb2,
    model_pb2,
    prompt_pb2,
    tenant_pb2,
    tool_pb2,
)

E = TypeVar("E", bound=Enum)


def _enum_map(pairs: Mapping[Any, E]) -> tuple[dict[int, E], dict[E, Any]]:
    return dict(pairs), {v: k for k, v in pairs.items()}


TOOL_KINDS = _enum_map(
    {
        tool_pb2.TOOL_KIND_UNSPECIFIED: r.ToolKind.UNSPECIFIED,
        tool_pb2.TOOL_KIND_BUILTIN: r.ToolKind.BUILTIN,
        tool_pb2.TOOL_KIND_HTTP: r.ToolKind.HTTP,
        tool_pb2.TOOL_KIND_MCP: r.ToolKind.MCP,
    }
)
UNKNOWN_OUTCOME_POLICIES = _enum_map(
    {
        tool_pb2.UNKNOWN_OUTCOME_POLICY_UNSPECIFIED: r.UnknownOutcomePolicy.UNSPECIFIED,
        tool_pb2.UNKNOWN_OUTCOME_POLICY_ASK: r.UnknownOutcomePolicy.ASK,
        tool_pb2.UNKNOWN_OUTCOME_POLICY_FAIL: r.UnknownOutcomePolicy.FAIL,
    }
)
APPROVAL_MODES = _enum_map(
    {
        tool_pb2.APPROVAL_MODE_UNSPECIFIED: r.ApprovalMode.UNSPECIFIED,
        tool_pb2.APPROVAL_MODE_NEVER: r.ApprovalMode.NEVER,
        tool_pb2.APPROVAL_MODE_ALWAYS: r.ApprovalMode.ALWAYS,
        tool_pb2.APPROVAL_MODE_WHEN_UNTRUSTED: r.ApprovalMode.WHEN_UNTRUSTED,
    }
)
PROVIDERS = _enum_map(
    {
        model_pb2.MODEL_PROVIDER_UNSPECIFIED: r.ModelProvider.UNSPECIFIED,
        model_pb2.MODEL_PROVIDER_OPENAI: r.ModelProvider.OPENAI,
        model_pb2.MODEL_PROVIDER_SCRIPTED: r.ModelProvider.SCRIPTED,
    }
)
FAILURE_MODES = _enum_map(
    {
        tenant_pb2.FAILURE_MODE_UNSPECIFIED: r.FailureMode.UNSPECIFIED,
        tenant_pb2.FAILURE_MODE_FAIL_CLOSED: r.FailureMode.FAIL_CLOSED,
        tenant_pb2.FAILURE_MODE_FAIL_OPEN: r.FailureMode.FAIL_OPEN,
    }
)
ROLES = _enum_map(
    {
        api_key_pb2.ROLE_ADMIN: Role.ADMIN,
        api_key_pb2.ROLE_OPERATOR: Role.OPERATOR,
        api_key_pb2.ROLE_EXECUTOR: Role.EXECUTOR,
        api_key_pb2.ROLE_CLIENT: Role.CLIENT,
    }
)


def _enum(mapping: tuple[dict[int, E], dict[E, Any]], value: int, field: str) -> E:
    try:
        return mapping[0][value]
    except KeyError:
        raise InvalidArgument.of(field, f"unknown enum value {value}") from None


# -- scalar helpers -------------------------------------------------------------------


def _normalise_numbers(value: Any) -> Any:
    """Struct stores every number as a double; give whole numbers back as ints so a
    schema's "maxLength": 10 stays an integer."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normalise_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_numbers(v) for v in value]
    return value


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    result = _normalise_numbers(json_format.MessageToDict(message))
    assert isinstance(result, dict)
    return result


def dict_to_struct(value: Mapping[str, Any] | None, target: struct_pb2.Struct) -> None:
    if value:
        target.update(value)


def _optional_struct(message: Any, field: str) -> dict[str, Any] | None:
    return struct_to_dict(getattr(message, field)) if message.HasField(field) else None


def _duration(message: Any, field: str) -> timedelta | None:
    if not message.HasField(field):
        return None
    d: duration_pb2.Duration = getattr(message, field)
    return wellknown.duration(d, field)


def _set_duration(target: duration_pb2.Duration, value: timedelta | None) -> None:
    if value is not None:
        target.FromTimedelta(value)


def _decimal(text: str, field: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidArgument.of(field, f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise InvalidArgument.of(field, f"{text!r} is not a finite decimal number")
    return value


def _optional_decimal(text: str, field: str) -> Decimal | None:
    return _decimal(text, field) if text.strip() else None


def _decimal_text(value: Decimal | None) -> str:
    return "" if value is None else str(value)


def _timestamp(target: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)


def _meta(message: Any, record: Record[Any], kind: kinds.Kind[Any]) -> None:
    message.name = resource_name(kind, record.tenant, record.id)
    message.etag = record.etag
    _timestamp(message.create_time, record.create_time)
    _timestamp(message.update_time, record.update_time)


# -- Tool -------------------------------------------------------------------------


def tool_from_proto(m: tool_pb2.Tool) -> r.Tool:
    a = m.annotations
    return r.Tool(
        description=m.description,
        input_schema=struct_to_dict(m.input_schema),
        output_schema=_optional_struct(m, "output_schema"),
        kind=_enum(TOOL_KINDS, m.kind, "tool.kind"),
        endpoint=m.endpoint,
        remote_name=m.remote_name,
        timeout=_duration(m, "timeout"),
        retry_policy=r.RetryPolicy(
            max_attempts=m.retry_policy.max_attempts,
            initial_backoff=_duration(m.retry_policy, "initial_backoff"),
            max_backoff=_duration(m.retry_policy, "max_backoff"),
            backoff_multiplier=m.retry_policy.backoff_multiplier,
        ),
        annotations=r.ToolAnnotations(
            read_only_hint=a.read_only_hint if a.HasField("read_only_hint") else None,
            destructive_hint=a.destructive_hint if a.HasField("destructive_hint") else None,
            idempotent_hint=a.idempotent_hint if a.HasField("idempotent_hint") else None,
            open_world_hint=a.open_world_hint if a.HasField("open_world_hint") else None,
        ),
        required_scope=m.required_scope,
        approval=_enum(APPROVAL_MODES, m.approval, "tool.approval"),
        trusted_output=m.trusted_output,
        unknown_outcome=_enum(UNKNOWN_OUTCOME_POLICIES, m.unknown_outcome, "tool.unknown_outcome"),
    )


def tool_to_proto(record: Record[r.Tool]) -> tool_pb2.Tool:
    t = record.spec
    m = tool_pb2.Tool(
        description=t.description,
        kind=TOOL_KINDS[1][t.kind],
        endpoint=t.endpoint,
        remote_name=t.remote_name,
        required_scope=t.required_scope,
        approval=APPROVAL_MODES[1][t.approval],
        trusted_output=t.trusted_output,
        unknown_outcome=UNKNOWN_OUTCOME_POLICIES[1][t.unknown_outcome],
    )
    dict_to_struct(t.input_schema, m.input_schema)
    if t.output_schema is not None:
        dict_to_struct(t.output_schema, m.output_schema)
        m.output_schema.SetInParent()
    _set_duration(m.timeout, t.timeout)
    rp = t.retry_policy
    m.retry_policy.max_attempts = rp.max_attempts
    m.retry_policy.backoff_multiplier = rp.backoff_multiplier
    _set_duration(m.retry_policy.initial_backoff, rp.initial_backoff)
    _set_duration(m.retry_policy.max_backoff, rp.max_backoff)
    for hint in ("read_only_hint", "destructive_hint", "idempotent_hint", "open_world_hint"):
        value = getattr(t.annotations, hint)
        if value is not None:
            setattr(m.annotations, hint, value)
    _meta(m, record, kinds.TOOL)
    return m


# -- Model and ModelRoute -----------------------------------------------------------


def model_from_proto(m: model_pb2.Model) -> r.Model:
    return r.Model(
        provider=_enum(PROVIDERS, m.provider, "model.provider"),
        endpoint=m.endpoint,
        provider_model=m.provider_model,
        input_price_per_million=_decimal(
            m.input_price_per_million or "0", "model.input_price_per_million"
        ),
        output_price_per_million=_decimal(
            m.output_price_per_million or "0", "model.output_price_per_million"
        ),
        context_window=m.context_window,
        max_output_tokens=m.max_output_tokens,
        api_key_env=m.api_key_env,
        scripted=_scripted_from_proto(m.scripted) if m.HasField("scripted") else None,
        credential=m.credential,
    )


def _scripted_from_proto(m: model_pb2.ScriptedModel) -> r.ScriptedModel:
    return r.ScriptedModel(
        rules=tuple(
            r.ScriptedRule(
                on_step=rule.on_step,
                input_contains=rule.input_contains,
                last_tool_result_contains=rule.last_tool_result_contains,
                answer=rule.answer,
                tool_calls=tuple(
                    r.ScriptedToolCall(call.tool, struct_to_dict(call.arguments))
                    for call in rule.tool_calls
                ),
                fail_with_status=rule.fail_with_status,
                latency=_duration(rule, "latency"),
            )
            for rule in m.rules
        )
    )


def _scripted_to_proto(s: r.ScriptedModel, target: model_pb2.ScriptedModel) -> None:
    target.SetInParent()
    for rule in s.rules:
        out = target.rules.add(
            on_step=rule.on_step,
            input_contains=rule.input_contains,
            last_tool_result_contains=rule.last_tool_result_contains,
            answer=rule.answer,
            fail_with_status=rule.fail_with_status,
        )
        _set_duration(out.latency, rule.latency)
        for call in rule.tool_calls:
            arguments = out.tool_calls.add(tool=call.tool).arguments
            arguments.SetInParent()  # {} is arguments too: an empty object, not none
            dict_to_struct(call.arguments, arguments)


def model_to_proto(record: Record[r.Model]) -> model_pb2.Model:
    s = record.spec
    m = model_pb2.Model(
        provider=PROVIDERS[1][s.provider],
        endpoint=s.endpoint,
        provider_model=s.provider_model,
        input_price_per_million=str(s.input_price_per_million),
        output_price_per_million=str(s.output_price_per_million),
        context_window=s.context_window,
        max_output_tokens=s.max_output_tokens,
        api_key_env=s.api_key_env,
        credential=s.credential,
    )
    if s.scripted is not None:
        _scripted_to_proto(s.scripted, m.scripted)
    _meta(m, record, kinds.MODEL)
    return m


def model_route_from_proto(m: model_pb2.ModelRoute) -> r.ModelRoute:
    return r.ModelRoute(
        targets=tuple(r.ModelRouteTarget(t.model, t.weight) for t in m.targets),
        fallbacks=tuple(m.fallbacks),
    )


def model_route_to_proto(record: Record[r.ModelRoute]) -> model_pb2.ModelRoute:
    s = record.spec
    m = model_pb2.ModelRoute(
        targets=[model_pb2.ModelRouteTarget(model=t.model, weight=t.weight) for t in s.targets],
        fallbacks=list(s.fallbacks),
    )
    _meta(m, record, kinds.MODEL_ROUTE)
    return m


# -- Prompt and PromptVersion ---------------------------------------------------------


def prompt_from_proto(m: prompt_pb2.Prompt) -> r.Prompt:
    return r.Prompt(description=m.description)


def prompt_to_proto(record: Record[r.Prompt]) -> prompt_pb2.Prompt:
    m = prompt_pb2.Prompt(description=record.spec.description, labels=record.spec.labels)
    _meta(m, record, kinds.PROMPT)
    return m


def prompt_version_from_proto(m: prompt_pb2.PromptVersion) -> r.PromptVersion:
    p = m.parameters
    return r.PromptVersion(
        template=m.template,
        variables=tuple(
            r.PromptVariable(v.name, v.description, v.required, v.default_value)
            for v in m.variables
        ),
        model_route=m.model_route,
        parameters=r.ModelParameters(
            temperature=p.temperature if p.HasField("temperature") else None,
            top_p=p.top_p if p.HasField("top_p") else None,
            max_output_tokens=p.max_output_tokens if p.HasField("max_output_tokens") else None,
            stop=tuple(p.stop),
        ),
    )


def prompt_version_to_proto(record: Record[r.PromptVersion]) -> prompt_pb2.PromptVersion:
    s = record.spec
    m = prompt_pb2.PromptVersion(
        name=resource_name(kinds.PROMPT_VERSION, record.tenant, record.id),
        template=s.template,
        variables=[
            prompt_pb2.PromptVariable(
                name=v.name,
                description=v.description,
                required=v.required,
                default_value=v.default_value,
            )
            for v in s.variables
        ],
        model_route=s.model_route,
        content_hash=content_hash(s),
    )
    params = s.parameters
    for field in ("temperature", "top_p", "max_output_tokens"):
        value = getattr(params, field)
        if value is not None:
            setattr(m.parameters, field, value)
    m.parameters.stop.extend(params.stop)
    _timestamp(m.create_time, record.create_time)
    return m


# -- Agent ----------------------------------------------------------------------------


def agent_from_proto(m: agent_pb2.Agent) -> r.Agent:
    b = m.default_budget
    return r.Agent(
        description=m.description,
        prompt=m.prompt,
        prompt_label=m.prompt_label,
        prompt_version=m.prompt_version,
        model_route=m.model_route,
        tools=tuple(m.tools),
        default_budget=r.Budget(
            max_steps=b.max_steps,
            max_tool_calls=b.max_tool_calls,
            max_tokens=b.max_tokens,
            max_usd=_optional_decimal(b.max_usd, "agent.default_budget.max_usd"),
            max_wall_time=_duration(b, "max_wall_time"),
        ),
        approval_policy=r.ApprovalPolicy(
            default_mode=_enum(
                APPROVAL_MODES,
                m.approval_policy.default_mode,
                "agent.approval_policy.default_mode",
            ),
            require_for_destructive=m.approval_policy.require_for_destructive,
            always_require=tuple(m.approval_policy.always_require),
            timeout=_duration(m.approval_policy, "timeout"),
            allow_open_world_when_untrusted=tuple(
                m.approval_policy.allow_open_world_when_untrusted
            ),
        ),
        guardrail_policy=r.GuardrailPolicy(
            screen_tool_output=m.guardrail_policy.screen_tool_output,
            redact_pii=m.guardrail_policy.redact_pii,
            blocked_patterns=tuple(m.guardrail_policy.blocked_patterns),
            injection_classifier=m.guardrail_policy.injection_classifier,
        ),
        output_schema=_optional_struct(m, "output_schema"),
    )


def agent_to_proto(record: Record[r.Agent]) -> agent_pb2.Agent:
    s = record.spec
    m = agent_pb2.Agent(
        description=s.description,
        prompt=s.prompt,
        model_route=s.model_route,
        tools=list(s.tools),
    )
    if s.prompt_version:
        m.prompt_version = s.prompt_version
    elif s.prompt_label:
        m.prompt_label = s.prompt_label
    b = s.default_budget
    m.default_budget.max_steps = b.max_steps
    m.default_budget.max_tool_calls = b.max_tool_calls
    m.default_budget.max_tokens = b.max_tokens
    m.default_budget.max_usd = _decimal_text(b.max_usd)
    _set_duration(m.default_budget.max_wall_time, b.max_wall_time)
    ap = s.approval_policy
    m.approval_policy.default_mode = APPROVAL_MODES[1][ap.default_mode]
    m.approval_policy.require_for_destructive = ap.require_for_destructive
    m.approval_policy.always_require.extend(ap.always_require)
    m.approval_policy.allow_open_world_when_untrusted.extend(ap.allow_open_world_when_untrusted)
    _set_duration(m.approval_policy.timeout, ap.timeout)
    g = s.guardrail_policy
    m.guardrail_policy.screen_tool_output = g.screen_tool_output
    m.guardrail_policy.redact_pii = g.redact_pii
    m.guardrail_policy.blocked_patterns.extend(g.blocked_patterns)
    m.guardrail_policy.injection_classifier = g.injection_classifier
    if s.output_schema is not None:
        dict_to_struct(s.output_schema, m.output_schema)
        m.output_schema.SetInParent()
    _meta(m, record, kinds.AGENT)
    return m


# -- Tenant, QuotaPolicy, ApiKey ------------------------------------------------------


def tenant_from_proto(m: tenant_pb2.Tenant) -> r.Tenant:
    return r.Tenant(display_name=m.display_name, capture_content=m.capture_content)


def tenant_to_proto(record: Record[r.Tenant]) -> tenant_pb2.Tenant:
    m = tenant_pb2.Tenant(
        display_name=record.spec.display_name, capture_content=record.spec.capture_content
    )
    _meta(m, record, kinds.TENANT)
    return m


def quota_policy_from_proto(message: tenant_pb2.QuotaPolicy) -> r.QuotaPolicy:
    m: Any = message

    def opt_int(field: str) -> int | None:
        return int(getattr(m, field)) if m.HasField(field) else None

    def opt_dec(field: str) -> Decimal | None:
        return _decimal(getattr(m, field), f"quota_policy.{field}") if m.HasField(field) else None

    return r.QuotaPolicy(
        usd_per_day=opt_dec("usd_per_day"),
        usd_per_month=opt_dec("usd_per_month"),
        tokens_per_minute=opt_int("tokens_per_minute"),
        requests_per_minute=opt_int("requests_per_minute"),
        max_concurrent_runs=opt_int("max_concurrent_runs"),
        failure_mode=_enum(FAILURE_MODES, m.failure_mode, "quota_policy.failure_mode"),
    )


def quota_policy_to_proto(record: Record[r.QuotaPolicy]) -> tenant_pb2.QuotaPolicy:
    s = record.spec
    m = tenant_pb2.QuotaPolicy(
        name=resource_name(kinds.QUOTA_POLICY, record.tenant, record.id),
        failure_mode=FAILURE_MODES[1][s.failure_mode],
        etag=record.etag,
    )
    for field in ("usd_per_day", "usd_per_month"):
        value = getattr(s, field)
        if value is not None:
            setattr(m, field, str(value))
    for field in ("tokens_per_minute", "requests_per_minute", "max_concurrent_runs"):
        value = getattr(s, field)
        if value is not None:
            setattr(m, field, value)
    _timestamp(m.update_time, record.update_time)
    return m


def role_from_proto(value: int) -> Role:
    if value == api_key_pb2.ROLE_UNSPECIFIED:
        raise InvalidArgument.of("api_key.role", "is required: admin, operator, executor or client")
    return _enum(ROLES, value, "api_key.role")


def api_key_to_proto(key: ApiKey) -> api_key_pb2.ApiKey:
    m = api_key_pb2.ApiKey(
        name=key.name,
        display_name=key.display_name,
        role=ROLES[1][key.role],
        tenant=f"tenants/{key.tenant}" if key.tenant else "",
        scopes=key.scopes,
    )
    _timestamp(m.expire_time, key.expire_time)
    _timestamp(m.create_time, key.create_time)
    return m


def api_key_digest_to_proto(record: Record[r.ApiKeyDigest]) -> discovery_pb2.ApiKeyDigest:
    s = record.spec
    m = discovery_pb2.ApiKeyDigest(
        name=f"apiKeys/{record.id}",
        role=ROLES[1][Role(s.role)],
        tenant=f"tenants/{record.tenant}",
        secret_sha256=s.secret_sha256,
        scopes=s.scopes,
    )
    _timestamp(m.expire_time, s.expire_time)
    return m
