"""An executor's configuration: the resources of one snapshot, parsed, indexed and checked.

The executor checks every snapshot before it uses one: a snapshot that does not parse,
names something it does not hold, or carries a JSON Schema or pattern the executor could
not apply is rejected (NACKed) and the previous one stays in force.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message

from pilothouse import jsonschemas, patterns
from pilothouse.assignment import Stickiness, in_candidate, unit_key
from pilothouse.v1 import (
    agent_pb2,
    discovery_pb2,
    model_pb2,
    prompt_pb2,
    rollout_pb2,
    tenant_pb2,
    tool_pb2,
)

TYPE_PREFIX = "type.googleapis.com/pilothouse.v1."
MESSAGES: dict[str, type[Message]] = {
    "ApiKeyDigest": discovery_pb2.ApiKeyDigest,
    "Tenant": tenant_pb2.Tenant,
    "QuotaPolicy": tenant_pb2.QuotaPolicy,
    "Tool": tool_pb2.Tool,
    "Model": model_pb2.Model,
    "ModelRoute": model_pb2.ModelRoute,
    "PromptVersion": prompt_pb2.PromptVersion,
    "Prompt": prompt_pb2.Prompt,
    "Agent": agent_pb2.Agent,
    "Rollout": rollout_pb2.Rollout,
}
TYPE_URLS = tuple(TYPE_PREFIX + kind for kind in MESSAGES)
DEFAULT_PROMPT_LABEL = "production"
STICKINESS = {
    rollout_pb2.STICKINESS_UNSPECIFIED: Stickiness.SESSION,
    rollout_pb2.STICKINESS_SESSION: Stickiness.SESSION,
    rollout_pb2.STICKINESS_USER: Stickiness.USER,
    rollout_pb2.STICKINESS_TENANT: Stickiness.TENANT,
}
BASELINE = "baseline"
CANDIDATE = "candidate"


@dataclass(frozen=True)
class RunUnit:
    """Who a new run is for, as a rollout's stickiness reads it."""

    tenant: str
    user: str = ""
    session: str = ""


M = TypeVar("M", bound=Message)


class ConfigError(Exception):
    """A snapshot the executor will not use; the message goes back in the NACK."""


@dataclass(frozen=True)
class ExecutorConfig:
    """One snapshot's resources by kind and name. Immutable once built."""

    version: str
    resources: Mapping[str, Mapping[str, Message]]
    _validators: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def input_validator(self, tool: tool_pb2.Tool) -> Any:
        """The validator of a tool's arguments, built on its first call and kept as long
        as the snapshot is."""
        validator = self._validators.get(tool.name)
        if validator is None:
            validator = jsonschemas.validator(json_format.MessageToDict(tool.input_schema))
            self._validators[tool.name] = validator
        return validator

    def output_validator(self, agent: agent_pb2.Agent) -> Any:
        """The validator of an agent's final answers; None when it sets no schema."""
        if not agent.HasField("output_schema"):
            return None
        key = f"output:{agent.name}"
        validator = self._validators.get(key)
        if validator is None:
            validator = jsonschemas.validator(json_format.MessageToDict(agent.output_schema))
            self._validators[key] = validator
        return validator

    def get(self, kind: type[M], name: str) -> M | None:
        found = self.resources.get(kind.DESCRIPTOR.name, {}).get(name)
        return found if isinstance(found, kind) else None

    def all(self, kind: type[M]) -> list[M]:
        return [
            m for m in self.resources.get(kind.DESCRIPTOR.name, {}).values() if isinstance(m, kind)
        ]

    def agent_prompt_version(self, agent: agent_pb2.Agent) -> prompt_pb2.PromptVersion | None:
        """The prompt version an agent runs now (its pinned one, or its label's)."""
        if agent.prompt_version:
            return self.get(prompt_pb2.PromptVersion, agent.prompt_version)
        prompt = self.get(prompt_pb2.Prompt, agent.prompt)
        if prompt is None:
            return None
        version = prompt.labels.get(agent.prompt_label or DEFAULT_PROMPT_LABEL)
        return self.get(prompt_pb2.PromptVersion, version) if version else None

    def assigned_version(
        self, agent: agent_pb2.Agent, unit: RunUnit
    ) -> tuple[prompt_pb2.PromptVersion | None, str]:
        """The version a new run of ``agent`` for ``unit`` gets, and its rollout variant
        ("" when no rollout applies). A rollout applies to agents that run the prompt's
        production label while that label points at the rollout's baseline."""
        version = self.agent_prompt_version(agent)
        if (
            version is None
            or agent.prompt_version
            or (agent.prompt_label or DEFAULT_PROMPT_LABEL) != DEFAULT_PROMPT_LABEL
        ):
            return version, ""
        rollout = self._rollouts_by_prompt.get(agent.prompt)
        if rollout is None or rollout.baseline_version != version.name:
            return version, ""
        key = unit_key(
            STICKINESS[rollout.stickiness], tenant=unit.tenant, user=unit.user, session=unit.session
        )
        if in_candidate(rollout.name, key, rollout.weight_bps):
            candidate = self.get(prompt_pb2.PromptVersion, rollout.candidate_version)
            if candidate is not None:
                return candidate, CANDIDATE
        return version, BASELINE

    @cached_property
    def _rollouts_by_prompt(self) -> dict[str, rollout_pb2.Rollout]:
        return {ro.prompt: ro for ro in self.all(rollout_pb2.Rollout)}

    def to_proto(self) -> discovery_pb2.ConfigSnapshot:
        snapshot = discovery_pb2.ConfigSnapshot(version=self.version)
        for kind in MESSAGES:
            for message in self.resources.get(kind, {}).values():
                packed = snapshot.resources.add()
                packed.Pack(message)
        return snapshot

    @classmethod
    def from_proto(cls, snapshot: discovery_pb2.ConfigSnapshot) -> ExecutorConfig:
        by_type: dict[str, list[any_pb2.Any]] = {}
        for packed in snapshot.resources:
            by_type.setdefault(packed.type_url, []).append(packed)
        return parse(snapshot.version, by_type)


def parse(version: str, by_type: Mapping[str, Sequence[any_pb2.Any]]) -> ExecutorConfig:
    """Unpack and check one snapshot; ConfigError says what is wrong."""
    resources: dict[str, dict[str, Message]] = {kind: {} for kind in MESSAGES}
    for type_url, items in by_type.items():
        kind = type_url.removeprefix(TYPE_PREFIX)
        if kind not in MESSAGES or not type_url.startswith(TYPE_PREFIX):
            raise ConfigError(f"unexpected resource type {type_url}")
        for packed in items:
            if packed.type_url != type_url:
                raise ConfigError(f"a {packed.type_url} resource came as {type_url}")
            message = MESSAGES[kind]()
            try:
                message.ParseFromString(packed.value)
            except DecodeError as e:
                raise ConfigError(f"a {kind} resource does not parse: {e}") from e
            name = getattr(message, "name", "")
            if not name:
                raise ConfigError(f"a {kind} resource has no name")
            if name in resources[kind]:
                raise ConfigError(f"{kind} {name} appears twice")
            resources[kind][name] = message
    config = ExecutorConfig(version, resources)
    problems = list(_problems(config))
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(f"snapshot {version} rejected: {shown}{more}")
    return config


def _problems(config: ExecutorConfig) -> list[str]:
    problems: list[str] = []

    def need(kind: type[Message], name: str, what: str) -> None:
        if config.get(kind, name) is None:
            problems.append(f"{what} names missing {kind.DESCRIPTOR.name} {name}")

    for tool in config.all(tool_pb2.Tool):
        for schema in ("input_schema", "output_schema"):
            if tool.HasField(schema):
                _check_schema(problems, f"tool {tool.name} {schema}", getattr(tool, schema))
    for route in config.all(model_pb2.ModelRoute):
        if not route.targets:
            problems.append(f"model route {route.name} has no targets")
        for target in route.targets:
            need(model_pb2.Model, target.model, f"model route {route.name}")
            if target.weight < 1:
                problems.append(f"model route {route.name} gives {target.model} no weight")
        for fallback in route.fallbacks:
            need(model_pb2.Model, fallback, f"model route {route.name}")
    for version in config.all(prompt_pb2.PromptVersion):
        need(model_pb2.ModelRoute, version.model_route, f"prompt version {version.name}")
    for prompt in config.all(prompt_pb2.Prompt):
        for label, version_name in prompt.labels.items():
            need(prompt_pb2.PromptVersion, version_name, f"label {label} of {prompt.name}")
    for rollout in config.all(rollout_pb2.Rollout):
        for version_name in (rollout.baseline_version, rollout.candidate_version):
            need(prompt_pb2.PromptVersion, version_name, f"rollout {rollout.name}")
        if not 0 <= rollout.weight_bps <= 10_000:
            problems.append(f"rollout {rollout.name} has weight {rollout.weight_bps} bps")
    for agent in config.all(agent_pb2.Agent):
        what = f"agent {agent.name}"
        need(prompt_pb2.Prompt, agent.prompt, what)
        if (
            config.get(prompt_pb2.Prompt, agent.prompt)
            and config.agent_prompt_version(agent) is None
        ):
            problems.append(f"{what} has no prompt version to run")
        if agent.model_route:
            need(model_pb2.ModelRoute, agent.model_route, what)
        for tool_name in agent.tools:
            need(tool_pb2.Tool, tool_name, what)
        for i, pattern in enumerate(agent.guardrail_policy.blocked_patterns):
            why = patterns.problem(pattern)
            if why is not None:
                problems.append(f"{what} blocked_patterns[{i}] {why}")
        if agent.HasField("output_schema"):
            _check_schema(problems, f"{what} output_schema", agent.output_schema)
    return problems


def _check_schema(problems: list[str], what: str, struct: Any) -> None:
    why = jsonschemas.problem(json_format.MessageToDict(struct))
    if why is not None:
        problems.append(f"{what} {why}")
