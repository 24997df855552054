"""An executor's configuration: each tenant's resources, parsed, indexed and checked.

Configuration arrives one tenant at a time (``TenantConfig``), and the executor checks
each before it uses it: one that does not parse, holds another tenant's resources, names
something it does not hold, or carries a JSON Schema or pattern the executor could not
apply is rejected (NACKed) and that tenant's previous configuration stays in force; the
other tenants' are untouched. ``ExecutorConfig`` is what is in force: every tenant's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar, cast

from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message

from pilothouse import jsonschemas, patterns
from pilothouse.assignment import Stickiness, in_candidate, unit_key
from pilothouse.configuration import TYPE_PREFIX, combined_version, resource_name, tenant_of
from pilothouse.kinds import DELIVERED, ResourceKind
from pilothouse.v1 import (
    agent_pb2,
    discovery_pb2,
    model_pb2,
    prompt_pb2,
    rollout_pb2,
    tool_pb2,
)


def _message(kind: ResourceKind) -> type[Message]:
    module = importlib.import_module(kind.module)
    message: type[Message] = getattr(module, kind.name)
    return message


MESSAGES: dict[str, type[Message]] = {kind.name: _message(kind) for kind in DELIVERED}
"""The messages of the kinds executors get, in the order they apply them."""
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
    run: str = ""
    """The run's id: its own unit when it has no session or user id."""


M = TypeVar("M", bound=Message)
T = TypeVar("T")
_MISSING = object()


class ConfigError(Exception):
    """A snapshot the executor will not use; the message goes back in the NACK."""


@dataclass(frozen=True)
class TenantConfig:
    """One tenant's resources by kind and name, checked. Immutable once built."""

    tenant: str
    version: str
    resources: Mapping[str, Mapping[str, Message]]
    _derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def memo(self, key: str, build: Callable[[], T]) -> T:
        """A value derived from this snapshot's resources (``key`` names it), built on
        first use and kept as long as the snapshot is: at most a few per resource."""
        found = self._derived.get(key, _MISSING)
        if found is _MISSING:
            found = self._derived[key] = build()
        return cast(T, found)

    def input_validator(self, tool: tool_pb2.Tool) -> Any:
        """The validator of a tool's arguments."""
        return self.memo(
            f"input:{tool.name}",
            lambda: jsonschemas.validator(json_format.MessageToDict(tool.input_schema)),
        )

    def output_validator(self, agent: agent_pb2.Agent) -> Any:
        """The validator of an agent's final answers; None when it sets no schema."""
        if not agent.HasField("output_schema"):
            return None
        return self.memo(
            f"output:{agent.name}",
            lambda: jsonschemas.validator(json_format.MessageToDict(agent.output_schema)),
        )

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
            STICKINESS[rollout.stickiness],
            tenant=unit.tenant,
            user=unit.user,
            session=unit.session,
            run=unit.run,
        )
        if in_candidate(rollout.name, key, rollout.weight_bps):
            candidate = self.get(prompt_pb2.PromptVersion, rollout.candidate_version)
            if candidate is not None:
                return candidate, CANDIDATE
        return version, BASELINE

    @cached_property
    def _rollouts_by_prompt(self) -> dict[str, rollout_pb2.Rollout]:
        return {ro.prompt: ro for ro in self.all(rollout_pb2.Rollout)}

    def to_proto(self) -> discovery_pb2.TenantConfiguration:
        bundle = discovery_pb2.TenantConfiguration(
            name=resource_name(self.tenant), version=self.version
        )
        for kind in MESSAGES:
            for message in self.resources.get(kind, {}).values():
                bundle.resources.add().Pack(message)
        return bundle


def _owner(message: Message) -> str | None:
    """The tenant a resource belongs to."""
    if isinstance(message, discovery_pb2.ApiKeyDigest):
        return tenant_of(message.tenant)
    name = str(getattr(message, "name", ""))
    parts = name.split("/", 2)
    return parts[1] if len(parts) >= 2 and parts[0] == "tenants" and parts[1] else None


@dataclass(frozen=True)
class ExecutorConfig:
    """The configuration in force: each tenant's, as received and checked on its own.
    Immutable; a change makes a new one that shares every unchanged tenant's (and so the
    validators built for it)."""

    tenants: Mapping[str, TenantConfig] = field(default_factory=dict)

    @cached_property
    def version(self) -> str:
        """Equal to the control plane's version of the same tenants' configurations."""
        return combined_version({t: c.version for t, c in self.tenants.items()})

    def tenant_versions(self) -> dict[str, str]:
        """Resource name (tenants/{tenant}) → version held: what a reconnecting stream
        tells the control plane it has."""
        return {resource_name(t): c.version for t, c in self.tenants.items()}

    def changed(
        self, updated: Mapping[str, TenantConfig], removed: Iterable[str] = ()
    ) -> ExecutorConfig:
        gone = set(removed)
        tenants = {t: c for t, c in self.tenants.items() if t not in gone}
        tenants.update(updated)
        return ExecutorConfig(tenants)

    @cached_property
    def _key_owners(self) -> dict[str, TenantConfig]:
        return {
            name: config
            for config in self.tenants.values()
            for name in config.resources.get("ApiKeyDigest", {})
        }

    def _config_of(self, name: str) -> TenantConfig | None:
        if name.startswith("apiKeys/"):
            return self._key_owners.get(name)
        parts = name.split("/", 2)
        if len(parts) < 2 or parts[0] != "tenants":
            return None
        return self.tenants.get(parts[1])

    def get(self, kind: type[M], name: str) -> M | None:
        config = self._config_of(name)
        return None if config is None else config.get(kind, name)

    def all(self, kind: type[M]) -> list[M]:
        return [m for config in self.tenants.values() for m in config.all(kind)]

    def memo(self, name: str, key: str, build: Callable[[], T]) -> T:
        """``TenantConfig.memo`` of the tenant that owns ``name`` (built each time for a
        name no tenant owns)."""
        config = self._config_of(name)
        return build() if config is None else config.memo(key, build)

    def input_validator(self, tool: tool_pb2.Tool) -> Any:
        config = self._config_of(tool.name)
        if config is None:
            raise KeyError(tool.name)
        return config.input_validator(tool)

    def output_validator(self, agent: agent_pb2.Agent) -> Any:
        config = self._config_of(agent.name)
        return None if config is None else config.output_validator(agent)

    def agent_prompt_version(self, agent: agent_pb2.Agent) -> prompt_pb2.PromptVersion | None:
        config = self._config_of(agent.name)
        return None if config is None else config.agent_prompt_version(agent)

    def assigned_version(
        self, agent: agent_pb2.Agent, unit: RunUnit
    ) -> tuple[prompt_pb2.PromptVersion | None, str]:
        config = self._config_of(agent.name)
        return (None, "") if config is None else config.assigned_version(agent, unit)

    def to_proto(self) -> discovery_pb2.ConfigSnapshot:
        snapshot = discovery_pb2.ConfigSnapshot(version=self.version)
        for tenant in sorted(self.tenants):
            snapshot.tenants.append(self.tenants[tenant].to_proto())
        return snapshot

    @classmethod
    def from_proto(cls, snapshot: discovery_pb2.ConfigSnapshot) -> ExecutorConfig:
        """A saved configuration, checked again; one saved before per-tenant delivery
        (everything in ``resources``) is split by tenant, with versions to be refreshed."""
        if snapshot.tenants:
            return cls({c.tenant: c for c in (parse_tenant(b) for b in snapshot.tenants)})
        by_type: dict[str, list[any_pb2.Any]] = {}
        for packed in snapshot.resources:
            by_type.setdefault(packed.type_url, []).append(packed)
        return parse("", by_type)


def parse_tenant(bundle: discovery_pb2.TenantConfiguration) -> TenantConfig:
    """Unpack and check one tenant's configuration; ConfigError says what is wrong."""
    tenant = tenant_of(bundle.name)
    if tenant is None:
        raise ConfigError(f"{bundle.name[:100]!r} does not name a tenant")
    by_type: dict[str, list[any_pb2.Any]] = {}
    for packed in bundle.resources:
        by_type.setdefault(packed.type_url, []).append(packed)
    return _check(tenant, bundle.version, _unpack(by_type, tenant))


def parse(version: str, by_type: Mapping[str, Sequence[any_pb2.Any]]) -> ExecutorConfig:
    """Unpack and check resources of any tenants, each tenant's configuration given
    ``version``; ConfigError says what is wrong."""
    grouped: dict[str, dict[str, dict[str, Message]]] = {}
    for kind, resources in _unpack(by_type, None).items():
        for name, message in resources.items():
            owner = _owner(message)
            if owner is None:
                raise ConfigError(f"{kind} {name} belongs to no tenant")
            grouped.setdefault(owner, {k: {} for k in MESSAGES})[kind][name] = message
    return ExecutorConfig(
        {tenant: _check(tenant, version, resources) for tenant, resources in grouped.items()}
    )


def _unpack(
    by_type: Mapping[str, Sequence[any_pb2.Any]], tenant: str | None
) -> dict[str, dict[str, Message]]:
    """Resources by kind and name; with ``tenant``, every one must be that tenant's."""
    resources: dict[str, dict[str, Message]] = {kind: {} for kind in MESSAGES}
    for type_url, items in by_type.items():
        kind = type_url.removeprefix(TYPE_PREFIX)
        if kind not in MESSAGES or not type_url.startswith(TYPE_PREFIX):
            raise ConfigError(f"unexpected resource type {type_url[:200]}")
        for packed in items:
            if packed.type_url != type_url:
                raise ConfigError(f"a {packed.type_url[:200]} resource came as {type_url}")
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
            if tenant is not None and _owner(message) != tenant:
                raise ConfigError(f"{kind} {name} is not tenant {tenant}'s")
            resources[kind][name] = message
    return resources


def _check(tenant: str, version: str, resources: dict[str, dict[str, Message]]) -> TenantConfig:
    config = TenantConfig(tenant, version, resources)
    problems = list(_problems(config))
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(f"{resource_name(tenant)} {version} rejected: {shown}{more}")
    return config


def _problems(config: TenantConfig) -> list[str]:
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
        if agent.guardrail_policy.injection_classifier:
            need(model_pb2.ModelRoute, agent.guardrail_policy.injection_classifier, what)
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
