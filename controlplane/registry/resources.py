"""The registry's resources as plain dataclasses.

Field names follow the contract (``pilothouse.v1``) so that an ``update_mask`` path names
the same field on both sides. References to other resources are full resource names;
they always lie in the same tenant as the resource holding them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, TypeVar

JsonObject = dict[str, Any]


class ToolKind(StrEnum):
    UNSPECIFIED = ""
    BUILTIN = "builtin"
    HTTP = "http"
    MCP = "mcp"


class UnknownOutcomePolicy(StrEnum):
    UNSPECIFIED = ""
    ASK = "ask"
    FAIL = "fail"


class ApprovalMode(StrEnum):
    UNSPECIFIED = ""
    NEVER = "never"
    ALWAYS = "always"
    WHEN_UNTRUSTED = "when_untrusted"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 0
    """Attempts in all; 0 means the executor's default."""
    initial_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    backoff_multiplier: float = 0.0


@dataclass(frozen=True)
class ToolAnnotations:
    """MCP tool annotations; None means MCP's default (see the ``effective_*`` properties)."""

    read_only_hint: bool | None = None
    destructive_hint: bool | None = None
    idempotent_hint: bool | None = None
    open_world_hint: bool | None = None

    @property
    def effective_read_only(self) -> bool:
        return bool(self.read_only_hint)

    @property
    def effective_destructive(self) -> bool:
        # MCP: destructive defaults to true, and is meaningful only when not read-only.
        if self.effective_read_only:
            return False
        return True if self.destructive_hint is None else self.destructive_hint

    @property
    def effective_idempotent(self) -> bool:
        return bool(self.idempotent_hint)

    @property
    def effective_open_world(self) -> bool:
        return True if self.open_world_hint is None else self.open_world_hint


@dataclass(frozen=True)
class Tool:
    description: str = ""
    input_schema: JsonObject = field(default_factory=dict)
    output_schema: JsonObject | None = None
    kind: ToolKind = ToolKind.UNSPECIFIED
    endpoint: str = ""
    remote_name: str = ""
    timeout: timedelta | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    annotations: ToolAnnotations = field(default_factory=ToolAnnotations)
    required_scope: str = ""
    approval: ApprovalMode = ApprovalMode.UNSPECIFIED
    trusted_output: bool = False
    unknown_outcome: UnknownOutcomePolicy = UnknownOutcomePolicy.UNSPECIFIED


class ModelProvider(StrEnum):
    UNSPECIFIED = ""
    OPENAI = "openai"
    SCRIPTED = "scripted"


@dataclass(frozen=True)
class ScriptedToolCall:
    tool: str = ""
    arguments: JsonObject = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptedRule:
    on_step: int = 0
    input_contains: str = ""
    last_tool_result_contains: str = ""
    answer: str = ""
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    fail_with_status: int = 0
    latency: timedelta | None = None


@dataclass(frozen=True)
class ScriptedModel:
    rules: tuple[ScriptedRule, ...] = ()


@dataclass(frozen=True)
class Model:
    provider: ModelProvider = ModelProvider.UNSPECIFIED
    endpoint: str = ""
    provider_model: str = ""
    input_price_per_million: Decimal = Decimal(0)
    output_price_per_million: Decimal = Decimal(0)
    context_window: int = 0
    max_output_tokens: int = 0
    api_key_env: str = ""
    """Deprecated and refused: kept so that models stored before ``credential`` load and
    can be told what to change."""
    scripted: ScriptedModel | None = None
    credential: str = ""


@dataclass(frozen=True)
class ModelRouteTarget:
    model: str = ""
    weight: int = 0


@dataclass(frozen=True)
class ModelRoute:
    targets: tuple[ModelRouteTarget, ...] = ()
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    """Label → version name. Moved only by ``PromptRegistry.set_label``."""


@dataclass(frozen=True)
class PromptVariable:
    name: str = ""
    description: str = ""
    required: bool = False
    default_value: str = ""


@dataclass(frozen=True)
class ModelParameters:
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptVersion:
    """Immutable; its id is the first 16 hex digits of ``content_hash(version)``."""

    template: str = ""
    variables: tuple[PromptVariable, ...] = ()
    model_route: str = ""
    parameters: ModelParameters = field(default_factory=ModelParameters)


@dataclass(frozen=True)
class Budget:
    """Hard limits of one run; zero or None means no limit of that kind."""

    max_steps: int = 0
    max_tool_calls: int = 0
    max_tokens: int = 0
    max_usd: Decimal | None = None
    max_wall_time: timedelta | None = None


@dataclass(frozen=True)
class ApprovalPolicy:
    default_mode: ApprovalMode = ApprovalMode.UNSPECIFIED
    require_for_destructive: bool = False
    always_require: tuple[str, ...] = ()
    timeout: timedelta | None = None
    allow_open_world_when_untrusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardrailPolicy:
    screen_tool_output: bool = False
    redact_pii: bool = False
    blocked_patterns: tuple[str, ...] = ()
    injection_classifier: str = ""


@dataclass(frozen=True)
class Agent:
    description: str = ""
    prompt: str = ""
    prompt_label: str = ""
    prompt_version: str = ""
    model_route: str = ""
    tools: tuple[str, ...] = ()
    default_budget: Budget = field(default_factory=Budget)
    approval_policy: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    guardrail_policy: GuardrailPolicy = field(default_factory=GuardrailPolicy)
    output_schema: JsonObject | None = None


@dataclass(frozen=True)
class Tenant:
    display_name: str = ""
    capture_content: bool = False


class FailureMode(StrEnum):
    UNSPECIFIED = ""
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"


@dataclass(frozen=True)
class QuotaPolicy:
    """A tenant's limits; None means unlimited, zero means nothing allowed."""

    usd_per_day: Decimal | None = None
    usd_per_month: Decimal | None = None
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    max_concurrent_runs: int | None = None
    failure_mode: FailureMode = FailureMode.UNSPECIFIED


class Stickiness(StrEnum):
    UNSPECIFIED = ""
    SESSION = "session"
    USER = "user"
    TENANT = "tenant"


class RolloutState(StrEnum):
    UNSPECIFIED = ""
    PENDING = "pending"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (RolloutState.PROMOTED, RolloutState.ABORTED)


class RolloutMetric(StrEnum):
    UNSPECIFIED = ""
    ERROR_RATE = "error_rate"
    LATENCY_P95 = "latency_p95"
    COST_PER_RUN = "cost_per_run"
    GUARDRAIL_VIOLATION_RATE = "guardrail_violation_rate"
    FEEDBACK_SCORE = "feedback_score"


@dataclass(frozen=True)
class RolloutStep:
    weight_bps: int = 0
    min_duration: timedelta | None = None
    min_runs: int = 0


@dataclass(frozen=True)
class RolloutCheck:
    metric: RolloutMetric = RolloutMetric.UNSPECIFIED
    threshold: float | None = None
    baseline_ratio: float | None = None


@dataclass(frozen=True)
class RolloutAnalysis:
    interval: timedelta | None = None
    min_sample_size: int = 0
    failure_limit: int = 0
    checks: tuple[RolloutCheck, ...] = ()
    consecutive_failure_limit: int = 0


@dataclass(frozen=True)
class EvalGate:
    suite: str = ""
    min_score: float = 0.0
    max_regression: float | None = None


@dataclass(frozen=True)
class Rollout:
    """A prompt's candidate version against its production version, in steps. The
    fields after ``analysis`` are the rollout's progress: output only, moved by
    ``controlplane.rollouts``."""

    prompt: str = ""
    baseline_version: str = ""
    candidate_version: str = ""
    stickiness: Stickiness = Stickiness.UNSPECIFIED
    steps: tuple[RolloutStep, ...] = ()
    analysis: RolloutAnalysis = field(default_factory=RolloutAnalysis)
    eval_gate: EvalGate | None = None
    state: RolloutState = RolloutState.UNSPECIFIED
    state_reason: str = ""
    step_index: int = 0
    weight_bps: int = 0
    step_start_time: datetime | None = None
    failed_analyses: int = 0


class Grader(StrEnum):
    UNSPECIFIED = ""
    EXACT = "exact"
    CONTAINS = "contains"
    REGEX = "regex"
    JSON_SCHEMA = "json_schema"
    MODEL_JUDGED = "model_judged"


@dataclass(frozen=True)
class Expectation:
    grader: Grader = Grader.UNSPECIFIED
    value: str = ""
    judge_agent: str = ""
    rubric: str = ""


@dataclass(frozen=True)
class EvalCase:
    id: str = ""
    input: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    expectations: tuple[Expectation, ...] = ()


@dataclass(frozen=True)
class EvalSuite:
    """The cases a prompt version of ``agent``'s prompt must pass."""

    agent: str = ""
    cases: tuple[EvalCase, ...] = ()


@dataclass(frozen=True)
class ApiKeyDigest:
    """What executors get of an API key to check it themselves: never the secret."""

    role: str = ""
    secret_sha256: str = ""
    expire_time: datetime | None = None
    scopes: tuple[str, ...] = ()


S = TypeVar("S")


@dataclass(frozen=True)
class Record(Generic[S]):
    """A stored resource: its spec and the metadata the registry keeps about it."""

    tenant: str
    id: str
    spec: S
    etag: str
    create_time: datetime
    update_time: datetime
