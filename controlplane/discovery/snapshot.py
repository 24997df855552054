"""Snapshots: what executors see of the registry, built by a pure function.

A snapshot is the union of per-tenant configurations. Each tenant's is versioned by its
content, checked for consistency (everything referenced is present) and, when the check
fails, not published: the tenant's previous configuration stays in force. A prompt's
versions are included only when a label, an agent or an unfinished rollout names them
(a pending rollout's candidate too, so that its eval suite can run on executors);
rollouts only while their candidate has a share of the runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from controlplane.registry import kinds
from controlplane.registry import resources as r
from controlplane.registry.codec import canonical_json
from controlplane.registry.names import tenant_name
from controlplane.registry.resources import Record
from controlplane.registry.service import QUOTA_POLICY_ID, RegistryContents, etag_of
from pilothouse.configuration import MAX_TENANT_CONFIG_BYTES, combined_version
from pilothouse.kinds import DELIVERED

KIND_ORDER = tuple(kind.name for kind in DELIVERED)
"""The kinds executors get, in the order they apply them (``pilothouse.kinds``)."""


@dataclass(frozen=True)
class TenantConfig:
    tenant: str
    resources: Mapping[str, tuple[Record[Any], ...]]
    """Kind name → the records executors get, in id order."""
    version: str
    problems: tuple[str, ...] = ()
    """Why the configuration is inconsistent; empty when it may be published."""
    sizes: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    """``{kind}/{id}@{etag}`` → the record's size as canonical JSON, so that a change
    measures only what changed."""


@dataclass(frozen=True)
class Snapshot:
    revision: int
    tenants: Mapping[str, TenantConfig] = field(default_factory=dict)

    @cached_property
    def version(self) -> str:
        return self.version_for(None)

    def version_for(self, tenant: str | None) -> str:
        """The version of what a caller confined to ``tenant`` (None: every tenant) sees."""
        return combined_version(self.versions(tenant))

    def versions(self, tenant: str | None) -> dict[str, str]:
        """Tenant id → configuration version, of the tenants a caller confined to
        ``tenant`` (None: every tenant) sees."""
        return {c.tenant: c.version for c in self._configs(tenant)}

    def tenant(self, tenant: str) -> TenantConfig | None:
        return self.tenants.get(tenant)

    def records(self, kind: str, tenant: str | None) -> list[Record[Any]]:
        return [rec for c in self._configs(tenant) for rec in c.resources.get(kind, ())]

    def _configs(self, tenant: str | None) -> list[TenantConfig]:
        if tenant is None:
            return [self.tenants[t] for t in sorted(self.tenants)]
        config = self.tenants.get(tenant)
        return [config] if config is not None else []


def build(
    contents: RegistryContents, previous: Snapshot | None = None
) -> tuple[Snapshot, dict[str, tuple[str, ...]]]:
    """The snapshot to publish, and the problems of each tenant whose new configuration
    was held back (its previous one, if any, stays)."""
    by_tenant: dict[str, dict[str, list[Record[Any]]]] = {
        t.tenant: {kind: [] for kind in KIND_ORDER} for t in contents.tenants
    }
    for t in contents.tenants:
        by_tenant[t.tenant]["Tenant"].append(t)
    for kind, records in contents.resources.items():
        for rec in records:
            if rec.tenant in by_tenant and kind in by_tenant[rec.tenant]:
                by_tenant[rec.tenant][kind].append(rec)
    configs: dict[str, TenantConfig] = {}
    held_back: dict[str, tuple[str, ...]] = {}
    for tenant, grouped in by_tenant.items():
        config = tenant_config(
            tenant, grouped, previous.tenants.get(tenant) if previous is not None else None
        )
        if not config.problems:
            configs[tenant] = config
            continue
        held_back[tenant] = config.problems
        if previous is not None and tenant in previous.tenants:
            configs[tenant] = previous.tenants[tenant]
    return Snapshot(contents.revision, configs), held_back


def tenant_config(
    tenant: str, grouped: Mapping[str, list[Record[Any]]], previous: TenantConfig | None = None
) -> TenantConfig:
    """A tenant's configuration, checked; ``previous`` (its published one) is returned as
    it is when nothing in it changed."""
    records = {kind: sorted(grouped.get(kind, []), key=lambda rec: rec.id) for kind in KIND_ORDER}
    if not records["QuotaPolicy"]:
        # Never set: executors get the default (unlimited) policy, named like a stored one.
        t = records["Tenant"][0]
        default = r.QuotaPolicy()
        records["QuotaPolicy"] = [
            Record(tenant, QUOTA_POLICY_ID, default, etag_of(default), t.create_time, t.create_time)
        ]
    unfinished = [rec for rec in records["Rollout"] if not rec.spec.state.finished]
    # Executors need a rollout only while it gives its candidate a share.
    records["Rollout"] = [rec for rec in unfinished if _routing(rec.spec)]
    records["PromptVersion"] = _versions_in_use(records, unfinished)
    digest = hashlib.sha256()
    for kind in KIND_ORDER:
        for rec in records[kind]:
            digest.update(f"{kind}/{rec.id}@{rec.etag};".encode())
    if previous is not None and previous.version == digest.hexdigest()[:16]:
        return previous
    problems = tuple(_problems(tenant, records))
    known = previous.sizes if previous is not None else {}
    sizes = {
        key: known.get(key) or len(canonical_json(rec.spec))
        for kind in KIND_ORDER
        for rec in records[kind]
        for key in (f"{kind}/{rec.id}@{rec.etag}",)
    }
    size = sum(sizes.values())
    if size > MAX_TENANT_CONFIG_BYTES:
        # Delivered as one resource, a tenant's configuration must fit one response;
        # a larger one is held back alone, never blocking another tenant's.
        problems += (
            f"{tenant_name(tenant)}'s configuration is {size} bytes; at most "
            f"{MAX_TENANT_CONFIG_BYTES} reach executors",
        )
    frozen = {kind: tuple(recs) for kind, recs in records.items()}
    return TenantConfig(tenant, frozen, digest.hexdigest()[:16], problems, sizes)


def _routing(rollout: r.Rollout) -> bool:
    return rollout.weight_bps > 0 and rollout.state in (
        r.RolloutState.PROGRESSING,
        r.RolloutState.PAUSED,
    )


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _version_id(name: str) -> str:
    """tenants/t/prompts/p/versions/v → p/v (the stored id)."""
    parts = name.split("/")
    return f"{parts[3]}/{parts[5]}" if len(parts) == 6 else name


def _versions_in_use(
    records: Mapping[str, list[Record[Any]]], rollouts: list[Record[r.Rollout]]
) -> list[Record[Any]]:
    wanted: set[str] = set()
    for prompt in records["Prompt"]:
        wanted |= {_version_id(v) for v in prompt.spec.labels.values()}
    for agent in records["Agent"]:
        if agent.spec.prompt_version:
            wanted.add(_version_id(agent.spec.prompt_version))
    for rollout in rollouts:
        wanted |= {
            _version_id(rollout.spec.baseline_version),
            _version_id(rollout.spec.candidate_version),
        }
    return [v for v in records["PromptVersion"] if v.id in wanted]


def _problems(tenant: str, records: Mapping[str, list[Record[Any]]]) -> Iterable[str]:
    ids = {kind: {rec.id for rec in recs} for kind, recs in records.items()}

    def missing(kind: str, name: str, stored_id: str | None = None) -> bool:
        return (stored_id or _short(name)) not in ids[kind]

    yield from _route_problems(records, missing)
    prompts = {p.id: p for p in records["Prompt"]}
    for p in records["Prompt"]:
        for label, version in p.spec.labels.items():
            if missing("PromptVersion", version, _version_id(version)):
                yield f"label {label} of prompt {p.id} points at missing {version}"
    for agent in records["Agent"]:
        yield from _agent_problems(agent, prompts, missing)
    for rollout in records["Rollout"]:
        for version in (rollout.spec.baseline_version, rollout.spec.candidate_version):
            if missing("PromptVersion", version, _version_id(version)):
                yield f"rollout {rollout.id} names missing {version}"
    if not records["Tenant"]:
        yield f"{tenant_name(tenant)} is missing"


def _route_problems(
    records: Mapping[str, list[Record[Any]]], missing: Callable[..., bool]
) -> Iterable[str]:
    for route in records["ModelRoute"]:
        for name in [t.model for t in route.spec.targets] + list(route.spec.fallbacks):
            if missing("Model", name):
                yield f"model route {route.id} names missing model {name}"
    for version in records["PromptVersion"]:
        if version.spec.model_route and missing("ModelRoute", version.spec.model_route):
            yield f"prompt version {version.id} names missing route {version.spec.model_route}"


def _agent_problems(
    agent: Record[Any],
    prompts: Mapping[str, Record[Any]],
    missing: Callable[..., bool],
) -> Iterable[str]:
    spec = agent.spec
    prompt = prompts.get(_short(spec.prompt))
    if prompt is None:
        yield f"agent {agent.id} names missing prompt {spec.prompt}"
    elif spec.prompt_version:
        if missing("PromptVersion", spec.prompt_version, _version_id(spec.prompt_version)):
            yield f"agent {agent.id} pins missing version {spec.prompt_version}"
    elif (spec.prompt_label or kinds.DEFAULT_PROMPT_LABEL) not in prompt.spec.labels:
        label = spec.prompt_label or kinds.DEFAULT_PROMPT_LABEL
        yield f"agent {agent.id} runs label {label} that prompt {prompt.id} lacks"
    if spec.model_route and missing("ModelRoute", spec.model_route):
        yield f"agent {agent.id} names missing route {spec.model_route}"
    classifier = spec.guardrail_policy.injection_classifier
    if classifier and missing("ModelRoute", classifier):
        yield f"agent {agent.id} names missing classifier route {classifier}"
    for tool in spec.tools:
        if missing("Tool", tool):
            yield f"agent {agent.id} names missing tool {tool}"
