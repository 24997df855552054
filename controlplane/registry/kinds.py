"""The registry's kinds of resource and the rules each must satisfy.

A ``Kind`` says where a resource lives (collection), how its spec is checked on its own
(``check``), which other resources it names (``references``: they must exist, in the same
tenant) and what it needs of their state (``check_state``). ``Registry`` applies them the
same way to every kind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from controlplane.errors import PreconditionViolation
from controlplane.registry import resources as r
from controlplane.registry.checks import Violations
from pilothouse import kinds as table

S = TypeVar("S")


@dataclass(frozen=True)
class Reference:
    """Field ``field`` (a path within the resource) names ``name``, a resource of ``kind``."""

    field: str
    kind: str
    name: str


StateReader = Callable[[str, str], Awaitable[Any]]
"""(kind, full name) → that resource's spec, or None when it does not exist."""


@dataclass(frozen=True)
class Kind(Generic[S]):
    name: str
    """Stored kind and the word used in messages, e.g. "Tool"."""
    collection: str
    """The name segment, e.g. "tools" in tenants/{tenant}/tools/{tool}."""
    request_field: str
    """The request's field holding the resource, e.g. "tool": prefixes violation paths."""
    spec_type: type[S]
    check: Callable[[S, Violations], None]
    references: Callable[[S], list[Reference]] = field(default=lambda _spec: [])
    check_state: Callable[[S, StateReader], Awaitable[list[PreconditionViolation]]] | None = None
    output_only: frozenset[str] = frozenset()
    """Fields callers cannot set through create or update."""
    child_kind: str | None = None
    """A kind whose resources belong to this one and are deleted with it."""
    initial: Callable[[S], S] | None = None
    """Sets the output-only fields of a new resource (after they are cleared)."""
    exclusive: Callable[[S], str | None] | None = None
    """For kinds of which at most one live resource may name a given resource (a
    prompt's one unfinished rollout): the name it claims, or None when it claims none."""


MAX_TIMEOUT = timedelta(hours=1)
# Limits of a tenant's resources: each is documented on its field in proto/, and a
# tenant's whole configuration is bounded again as executors receive it
# (pilothouse.configuration.MAX_TENANT_CONFIG_BYTES).
MAX_SCRIPTED_RULES = 100
MAX_SCRIPTED_TEXT = 65_536
MAX_SCRIPTED_CALLS = 16
MAX_SCRIPTED_ARGUMENTS = 16_384
MAX_ROUTE_MODELS = 16
MAX_TEMPLATE = 200_000
MAX_VARIABLES = 64
MAX_VARIABLE_DEFAULT = 4096
MAX_AGENT_TOOLS = 128
MAX_BLOCKED_PATTERNS = 64
MAX_STOP_SEQUENCE = 200
SCOPE_PATTERN = re.compile(r"^[a-z][a-z0-9_.:-]{0,99}$")
CREDENTIAL_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
BUILTIN_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
VARIABLE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]*)\s*\}\}")


def _check_tool(t: r.Tool, v: Violations) -> None:
    v.text("description", t.description, max_len=4096, required=True)
    v.json_schema("input_schema", t.input_schema, require_object=True)
    v.json_schema("output_schema", t.output_schema)
    if t.kind is r.ToolKind.UNSPECIFIED:
        v.add("kind", "is required: builtin, http or mcp")
    elif t.kind is r.ToolKind.BUILTIN:
        if not BUILTIN_PATTERN.match(t.endpoint):
            v.add("endpoint", "must name the builtin implementation (e.g. 'echo')")
    else:
        v.url("endpoint", t.endpoint, required=True)
    if t.remote_name and t.kind is not r.ToolKind.MCP:
        v.add("remote_name", "is only meaningful for mcp tools")
    v.text("remote_name", t.remote_name, max_len=128)
    v.duration("timeout", t.timeout, maximum=MAX_TIMEOUT)
    _check_retry(t.retry_policy, v)
    if t.required_scope and not SCOPE_PATTERN.match(t.required_scope):
        v.add("required_scope", f"{t.required_scope!r} must look like 'orders:write'")


def _check_retry(p: r.RetryPolicy, v: Violations) -> None:
    if not 0 <= p.max_attempts <= 10:
        v.add("retry_policy.max_attempts", "must be between 0 and 10")
    v.duration("retry_policy.initial_backoff", p.initial_backoff, maximum=MAX_TIMEOUT)
    v.duration("retry_policy.max_backoff", p.max_backoff, maximum=MAX_TIMEOUT)
    if p.initial_backoff and p.max_backoff and p.initial_backoff > p.max_backoff:
        v.add("retry_policy.max_backoff", "must not be less than initial_backoff")
    if p.backoff_multiplier != 0 and not 1 <= p.backoff_multiplier <= 10:
        v.add("retry_policy.backoff_multiplier", "must be between 1 and 10 (0 for the default)")


def _check_model(m: r.Model, v: Violations) -> None:
    if m.provider is r.ModelProvider.UNSPECIFIED:
        v.add("provider", "is required: openai or scripted")
    v.url("endpoint", m.endpoint, required=False)
    v.text("provider_model", m.provider_model, max_len=200)
    v.non_negative("input_price_per_million", m.input_price_per_million)
    v.non_negative("output_price_per_million", m.output_price_per_million)
    # A call's cost (tokens x price / 10^6) then has at most 12 decimal places: the
    # usage ledger sums costs exactly in units of 10^-12 USD.
    v.decimal_places("input_price_per_million", m.input_price_per_million, 6)
    v.decimal_places("output_price_per_million", m.output_price_per_million, 6)
    if m.context_window < 1:
        v.add("context_window", "must be at least 1")
    if m.max_output_tokens < 1:
        v.add("max_output_tokens", "must be at least 1")
    elif m.context_window >= 1 and m.max_output_tokens > m.context_window:
        v.add("max_output_tokens", f"must not exceed context_window ({m.context_window})")
    if m.api_key_env:
        v.add(
            "api_key_env",
            "is no longer accepted: executors send only credentials their operator granted "
            "to the tenant. Name one in credential and clear api_key_env in the same update "
            "(docs/security.md, 'Migrating from api_key_env')",
        )
    if m.credential and not CREDENTIAL_PATTERN.match(m.credential):
        v.add(
            "credential",
            f"{m.credential[:80]!r} is not a credential name (lower-case letters, digits "
            "and '-', starting with a letter, at most 63 characters)",
        )
    if m.scripted is not None:
        if m.provider is not r.ModelProvider.SCRIPTED:
            v.add("scripted", "is only meaningful for the scripted provider")
        v.count("scripted.rules", m.scripted.rules, maximum=MAX_SCRIPTED_RULES)
        for i, rule in enumerate(m.scripted.rules):
            where = f"scripted.rules[{i}]"
            replies = sum((bool(rule.answer), bool(rule.tool_calls), bool(rule.fail_with_status)))
            if replies != 1:
                v.add(where, "needs exactly one of answer, tool_calls, fail_with_status")
            if rule.fail_with_status and not 400 <= rule.fail_with_status <= 599:
                v.add(f"{where}.fail_with_status", "must be an HTTP error status (400-599)")
            if rule.on_step < 0:
                v.add(f"{where}.on_step", "must be at least 0")
            v.duration(f"{where}.latency", rule.latency, maximum=timedelta(minutes=5))
            v.text(f"{where}.answer", rule.answer, max_len=MAX_SCRIPTED_TEXT)
            v.text(f"{where}.input_contains", rule.input_contains, max_len=MAX_SCRIPTED_TEXT)
            v.text(
                f"{where}.last_tool_result_contains",
                rule.last_tool_result_contains,
                max_len=MAX_SCRIPTED_TEXT,
            )
            v.count(f"{where}.tool_calls", rule.tool_calls, maximum=MAX_SCRIPTED_CALLS)
            for j, call in enumerate(rule.tool_calls):
                v.id(f"{where}.tool_calls[{j}].tool", call.tool)
                v.json_size(
                    f"{where}.tool_calls[{j}].arguments",
                    call.arguments,
                    max_bytes=MAX_SCRIPTED_ARGUMENTS,
                )


def _check_route(m: r.ModelRoute, v: Violations) -> None:
    if not m.targets:
        v.add("targets", "needs at least one model")
    v.count("targets", m.targets, maximum=MAX_ROUTE_MODELS)
    v.count("fallbacks", m.fallbacks, maximum=MAX_ROUTE_MODELS)
    for i, target in enumerate(m.targets):
        if target.weight < 1:
            v.add(f"targets[{i}].weight", "must be at least 1")
    v.unique("targets", tuple(t.model for t in m.targets))
    v.unique("fallbacks", m.fallbacks)


def _route_refs(m: r.ModelRoute) -> list[Reference]:
    return [Reference(f"targets[{i}].model", "Model", t.model) for i, t in enumerate(m.targets)] + [
        Reference(f"fallbacks[{i}]", "Model", name) for i, name in enumerate(m.fallbacks)
    ]


def _check_prompt(p: r.Prompt, v: Violations) -> None:
    v.text("description", p.description, max_len=4096)


def check_prompt_version(p: r.PromptVersion, v: Violations) -> None:
    v.text("template", p.template, max_len=MAX_TEMPLATE, required=True)
    v.count("variables", p.variables, maximum=MAX_VARIABLES)
    declared: set[str] = set()
    for i, var in enumerate(p.variables):
        v.text(f"variables[{i}].default_value", var.default_value, max_len=MAX_VARIABLE_DEFAULT)
        v.text(f"variables[{i}].description", var.description, max_len=4096)
        if not VARIABLE_PATTERN.match(var.name):
            v.add(f"variables[{i}].name", f"{var.name!r} must be letters, digits and underscores")
        if var.name in declared:
            v.add(f"variables[{i}].name", f"{var.name!r} is declared twice")
        declared.add(var.name)
        if var.required and var.default_value:
            v.add(f"variables[{i}].default_value", "a required variable has no default")
    for placeholder in dict.fromkeys(PLACEHOLDER.findall(p.template)):
        if placeholder not in declared:
            v.add("template", f"uses {{{{{placeholder}}}}}, which variables does not declare")
    if not p.model_route:
        v.add("model_route", "is required (tenants/{tenant}/modelRoutes/{model_route})")
    params = p.parameters
    if params.temperature is not None and not 0 <= params.temperature <= 2:
        v.add("parameters.temperature", "must be between 0 and 2")
    if params.top_p is not None and not 0 < params.top_p <= 1:
        v.add("parameters.top_p", "must be greater than 0 and at most 1")
    if params.max_output_tokens is not None and params.max_output_tokens < 1:
        v.add("parameters.max_output_tokens", "must be at least 1")
    if len(params.stop) > 4:
        v.add("parameters.stop", "may hold at most 4 sequences")
    for i, stop in enumerate(params.stop):
        v.text(f"parameters.stop[{i}]", stop, max_len=MAX_STOP_SEQUENCE)


def _version_refs(p: r.PromptVersion) -> list[Reference]:
    return [Reference("model_route", "ModelRoute", p.model_route)] if p.model_route else []


def _check_agent(a: r.Agent, v: Violations) -> None:
    v.text("description", a.description, max_len=4096)
    if not a.prompt:
        v.add("prompt", "is required (tenants/{tenant}/prompts/{prompt})")
    if a.prompt_label and a.prompt_version:
        v.add("prompt_version", "set either prompt_label or prompt_version, not both")
    if a.prompt_label:
        v.id("prompt_label", a.prompt_label)
    if a.prompt_version and a.prompt and not a.prompt_version.startswith(a.prompt + "/versions/"):
        v.add("prompt_version", f"must be a version of {a.prompt!r}")
    v.unique("tools", a.tools)
    v.count("tools", a.tools, maximum=MAX_AGENT_TOOLS)
    v.count(
        "guardrail_policy.blocked_patterns",
        a.guardrail_policy.blocked_patterns,
        maximum=MAX_BLOCKED_PATTERNS,
    )
    budget = a.default_budget
    for name in ("max_steps", "max_tool_calls", "max_tokens"):
        v.non_negative(f"default_budget.{name}", getattr(budget, name))
    v.non_negative("default_budget.max_usd", budget.max_usd)
    v.duration("default_budget.max_wall_time", budget.max_wall_time, maximum=timedelta(days=7))
    policy = a.approval_policy
    for i, tool in enumerate(policy.always_require):
        if tool not in a.tools:
            v.add(
                f"approval_policy.always_require[{i}]", f"{tool!r} is not one of the agent's tools"
            )
    v.duration("approval_policy.timeout", policy.timeout, maximum=timedelta(days=30))
    for i, tool in enumerate(policy.allow_open_world_when_untrusted):
        if tool not in a.tools:
            v.add(
                f"approval_policy.allow_open_world_when_untrusted[{i}]",
                f"{tool[:200]!r} is not one of the agent's tools",
            )
    for i, pattern in enumerate(a.guardrail_policy.blocked_patterns):
        v.regex(f"guardrail_policy.blocked_patterns[{i}]", pattern)
    v.json_schema("output_schema", a.output_schema)


def _agent_refs(a: r.Agent) -> list[Reference]:
    refs = [Reference("prompt", "Prompt", a.prompt)] if a.prompt else []
    if a.prompt_version:
        refs.append(Reference("prompt_version", "PromptVersion", a.prompt_version))
    if a.model_route:
        refs.append(Reference("model_route", "ModelRoute", a.model_route))
    if a.guardrail_policy.injection_classifier:
        refs.append(
            Reference(
                "guardrail_policy.injection_classifier",
                "ModelRoute",
                a.guardrail_policy.injection_classifier,
            )
        )
    refs += [Reference(f"tools[{i}]", "Tool", name) for i, name in enumerate(a.tools)]
    return refs


DEFAULT_PROMPT_LABEL = "production"


async def _agent_state(a: r.Agent, read: StateReader) -> list[PreconditionViolation]:
    if a.prompt_version or not a.prompt:
        return []
    label = a.prompt_label or DEFAULT_PROMPT_LABEL
    prompt = await read("Prompt", a.prompt)
    if isinstance(prompt, r.Prompt) and label not in prompt.labels:
        return [
            PreconditionViolation(
                "MISSING_REFERENCE",
                a.prompt,
                f"prompt_label: prompt {a.prompt!r} has no label {label!r} "
                f"(labels: {', '.join(sorted(prompt.labels)) or 'none'})",
            )
        ]
    return []


MAX_ROLLOUT_STEPS = 20
FULL_WEIGHT = 10_000
"""A candidate's share is in basis points: 10,000 is every run."""
MAX_STEP_DURATION = timedelta(days=30)
MIN_ANALYSIS_INTERVAL = timedelta(seconds=1)
MAX_ANALYSIS_INTERVAL = timedelta(hours=1)
RATE_METRICS = frozenset({r.RolloutMetric.ERROR_RATE, r.RolloutMetric.GUARDRAIL_VIOLATION_RATE})


def _check_rollout(ro: r.Rollout, v: Violations) -> None:
    if not ro.prompt:
        v.add("prompt", "is required (tenants/{tenant}/prompts/{prompt})")
    versions = ro.prompt + "/versions/"
    if ro.baseline_version and not ro.baseline_version.startswith(versions):
        v.add("baseline_version", f"must be a version of {ro.prompt!r}")
    if not ro.candidate_version:
        v.add("candidate_version", "is required (a version of the prompt)")
    elif not ro.candidate_version.startswith(versions):
        v.add("candidate_version", f"must be a version of {ro.prompt!r}")
    elif ro.candidate_version == ro.baseline_version:
        v.add("candidate_version", "must differ from baseline_version")
    if not ro.steps:
        v.add("steps", "needs at least one step")
    elif len(ro.steps) > MAX_ROLLOUT_STEPS:
        v.add("steps", f"may have at most {MAX_ROLLOUT_STEPS} steps (has {len(ro.steps)})")
    previous = 0
    for i, step in enumerate(ro.steps):
        if not 1 <= step.weight_bps <= FULL_WEIGHT:
            v.add(f"steps[{i}].weight_bps", f"must be from 1 to {FULL_WEIGHT} basis points")
        elif step.weight_bps <= previous:
            v.add(f"steps[{i}].weight_bps", f"must be greater than the step before ({previous})")
        previous = max(previous, step.weight_bps)
        v.duration(f"steps[{i}].min_duration", step.min_duration, maximum=MAX_STEP_DURATION)
        v.non_negative(f"steps[{i}].min_runs", step.min_runs)
    a = ro.analysis
    if a.interval is not None and not MIN_ANALYSIS_INTERVAL <= a.interval <= MAX_ANALYSIS_INTERVAL:
        v.add("analysis.interval", "must be from 1 s to 1 h")
    v.non_negative("analysis.min_sample_size", a.min_sample_size)
    v.non_negative("analysis.failure_limit", a.failure_limit)
    v.non_negative("analysis.consecutive_failure_limit", a.consecutive_failure_limit)
    only_full = bool(ro.steps) and ro.steps[0].weight_bps >= FULL_WEIGHT
    seen: set[r.RolloutMetric] = set()
    for i, check in enumerate(a.checks):
        field = f"analysis.checks[{i}]"
        if check.metric is r.RolloutMetric.UNSPECIFIED:
            v.add(f"{field}.metric", "is required")
        elif check.metric in seen:
            v.add(f"{field}.metric", f"{check.metric.value} is checked twice")
        seen.add(check.metric)
        if check.threshold is None and check.baseline_ratio is None:
            v.add(field, "needs a threshold, a baseline_ratio or both")
        if check.threshold is not None:
            if not math.isfinite(check.threshold) or check.threshold < 0:
                v.add(f"{field}.threshold", "must be a finite number, at least 0")
            elif check.metric in RATE_METRICS | {r.RolloutMetric.FEEDBACK_SCORE} and (
                check.threshold > 1
            ):
                v.add(f"{field}.threshold", f"a {check.metric.value} is from 0 to 1")
        if check.baseline_ratio is not None and (
            not math.isfinite(check.baseline_ratio) or check.baseline_ratio <= 0
        ):
            v.add(f"{field}.baseline_ratio", "must be a finite number greater than 0")
        elif check.baseline_ratio is not None and only_full:
            v.add(
                f"{field}.baseline_ratio",
                "can never pass: the only step is 100 %, so the baseline gets no runs to "
                "compare with; add a step below 100 % first",
            )
    _check_eval_gate(ro.eval_gate, v)


def _check_eval_gate(gate: r.EvalGate | None, v: Violations) -> None:
    if gate is None:
        return
    if not gate.suite:
        v.add("eval_gate.suite", "is required (tenants/{tenant}/evalSuites/{suite})")
    if not (math.isfinite(gate.min_score) and 0 <= gate.min_score <= 1):
        v.add("eval_gate.min_score", "must be from 0 to 1")
    if gate.max_regression is not None and not (
        math.isfinite(gate.max_regression) and 0 <= gate.max_regression <= 1
    ):
        v.add("eval_gate.max_regression", "must be from 0 to 1")


def _rollout_refs(ro: r.Rollout) -> list[Reference]:
    refs = [Reference("prompt", "Prompt", ro.prompt)] if ro.prompt else []
    if ro.eval_gate is not None and ro.eval_gate.suite:
        refs.append(Reference("eval_gate.suite", "EvalSuite", ro.eval_gate.suite))
    if ro.baseline_version:
        refs.append(Reference("baseline_version", "PromptVersion", ro.baseline_version))
    if ro.candidate_version:
        refs.append(Reference("candidate_version", "PromptVersion", ro.candidate_version))
    return refs


async def _rollout_state(ro: r.Rollout, read: StateReader) -> list[PreconditionViolation]:
    if ro.state.finished:
        return []
    if ro.eval_gate is not None and ro.eval_gate.suite:
        suite = await read("EvalSuite", ro.eval_gate.suite)
        agent = await read("Agent", suite.agent) if isinstance(suite, r.EvalSuite) else None
        if isinstance(agent, r.Agent) and agent.prompt != ro.prompt:
            return [
                PreconditionViolation(
                    "EVAL_SUITE_OF_ANOTHER_PROMPT",
                    ro.eval_gate.suite,
                    f"eval_gate.suite: the suite runs {suite.agent!r}, whose prompt is "
                    f"{agent.prompt!r}, not {ro.prompt!r}",
                )
            ]
    prompt = await read("Prompt", ro.prompt)
    production = prompt.labels.get(DEFAULT_PROMPT_LABEL) if isinstance(prompt, r.Prompt) else None
    if production != ro.baseline_version:
        return [
            PreconditionViolation(
                "BASELINE_NOT_PRODUCTION",
                ro.prompt,
                f"baseline_version: {ro.baseline_version!r} is not the production version of "
                f"{ro.prompt!r} (production is {production or 'not set'})",
            )
        ]
    return []


def _rollout_exclusive(ro: r.Rollout) -> str | None:
    return None if ro.state.finished else ro.prompt


MAX_EVAL_CASES = 500
MAX_EXPECTATIONS = 10
MAX_CASE_INPUT_BYTES = 65_536
MAX_PATTERN = 1000
COMPARED = frozenset({r.Grader.EXACT, r.Grader.CONTAINS, r.Grader.REGEX, r.Grader.JSON_SCHEMA})


def _check_eval_suite(suite: r.EvalSuite, v: Violations) -> None:
    if not suite.agent:
        v.add("agent", "is required (tenants/{tenant}/agents/{agent})")
    if not suite.cases:
        v.add("cases", "needs at least one case")
    elif len(suite.cases) > MAX_EVAL_CASES:
        v.add("cases", f"may have at most {MAX_EVAL_CASES} cases (has {len(suite.cases)})")
    v.unique("cases.id", tuple(c.id for c in suite.cases))
    for i, case in enumerate(suite.cases):
        field = f"cases[{i}]"
        v.id(f"{field}.id", case.id)
        size = len(case.input.encode())
        if not case.input.strip():
            v.add(f"{field}.input", "is required")
        elif size > MAX_CASE_INPUT_BYTES:
            v.add(f"{field}.input", f"is {size} bytes; at most {MAX_CASE_INPUT_BYTES}")
        if not case.expectations:
            v.add(f"{field}.expectations", "needs at least one expectation")
        elif len(case.expectations) > MAX_EXPECTATIONS:
            v.add(f"{field}.expectations", f"may have at most {MAX_EXPECTATIONS}")
        for j, e in enumerate(case.expectations):
            _check_expectation(e, f"{field}.expectations[{j}]", v)


def _check_expectation(e: r.Expectation, field: str, v: Violations) -> None:
    if e.grader is r.Grader.UNSPECIFIED:
        v.add(f"{field}.grader", "is required")
    elif e.grader in COMPARED and not e.value:
        v.add(f"{field}.value", f"is required by the {e.grader.value} grader")
    elif e.grader is r.Grader.REGEX:
        if len(e.value) > MAX_PATTERN:
            v.add(f"{field}.value", f"must be at most {MAX_PATTERN} characters")
        else:
            v.regex(f"{field}.value", e.value)
    elif e.grader is r.Grader.JSON_SCHEMA:
        try:
            schema = json.loads(e.value)
        except ValueError as err:
            v.add(f"{field}.value", f"is not JSON: {err}")
        else:
            if isinstance(schema, dict):
                v.json_schema(f"{field}.value", schema)
            else:
                v.add(f"{field}.value", "must be a JSON Schema object")
    elif e.grader is r.Grader.MODEL_JUDGED:
        if not e.judge_agent:
            v.add(f"{field}.judge_agent", "is required by the model-judged grader")
        v.text(f"{field}.rubric", e.rubric, max_len=4096, required=True)


def _eval_suite_refs(suite: r.EvalSuite) -> list[Reference]:
    refs = [Reference("agent", "Agent", suite.agent)] if suite.agent else []
    refs += [
        Reference(f"cases[{i}].expectations[{j}].judge_agent", "Agent", e.judge_agent)
        for i, case in enumerate(suite.cases)
        for j, e in enumerate(case.expectations)
        if e.judge_agent
    ]
    return refs


def _check_tenant(t: r.Tenant, v: Violations) -> None:
    v.text("display_name", t.display_name, max_len=200)


def _check_quota(q: r.QuotaPolicy, v: Violations) -> None:
    for name in (
        "usd_per_day",
        "usd_per_month",
        "tokens_per_minute",
        "requests_per_minute",
        "max_concurrent_runs",
    ):
        v.non_negative(name, getattr(q, name))


def _kind(
    name: str, spec_type: type[S], check: Callable[[S, Violations], None], *more: Any, **fields: Any
) -> Kind[S]:
    """The registry's kind ``name``, where the table of kinds (``pilothouse.kinds``) says
    it lives."""
    entry = table.kind(name)
    return Kind(entry.name, entry.collection, entry.field, spec_type, check, *more, **fields)


TOOL = _kind("Tool", r.Tool, _check_tool)
MODEL = _kind("Model", r.Model, _check_model)
MODEL_ROUTE = _kind("ModelRoute", r.ModelRoute, _check_route, _route_refs)
PROMPT = _kind(
    "Prompt",
    r.Prompt,
    _check_prompt,
    output_only=frozenset({"labels"}),
    child_kind="PromptVersion",
)
PROMPT_VERSION = _kind("PromptVersion", r.PromptVersion, check_prompt_version, _version_refs)
AGENT = _kind("Agent", r.Agent, _check_agent, _agent_refs, _agent_state)
TENANT = _kind("Tenant", r.Tenant, _check_tenant)
ROLLOUT = _kind(
    "Rollout",
    r.Rollout,
    _check_rollout,
    _rollout_refs,
    _rollout_state,
    output_only=frozenset(
        {
            "state",
            "state_reason",
            "step_index",
            "weight_bps",
            "step_start_time",
            "failed_analyses",
        }
    ),
    initial=lambda ro: dataclasses.replace(
        ro,
        stickiness=ro.stickiness or r.Stickiness.SESSION,
        state=r.RolloutState.PENDING,
        state_reason="created; starts at the next analysis tick",
    ),
    exclusive=_rollout_exclusive,
)
EVAL_SUITE = _kind("EvalSuite", r.EvalSuite, _check_eval_suite, _eval_suite_refs)
QUOTA_POLICY = _kind("QuotaPolicy", r.QuotaPolicy, _check_quota)

TENANT_SCOPED: dict[str, Kind[Any]] = {
    k.name: k
    for k in (TOOL, MODEL, MODEL_ROUTE, PROMPT, PROMPT_VERSION, AGENT, ROLLOUT, EVAL_SUITE)
}

__all__ = [
    "AGENT",
    "EVAL_SUITE",
    "DEFAULT_PROMPT_LABEL",
    "MODEL",
    "MODEL_ROUTE",
    "PROMPT",
    "PROMPT_VERSION",
    "QUOTA_POLICY",
    "ROLLOUT",
    "TENANT",
    "TENANT_SCOPED",
    "TOOL",
    "Kind",
    "Reference",
]
