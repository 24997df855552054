"""The kinds of resource, in one table as plain strings: what each is called, where it
lives, which message carries it, whether executors get it over xDS (and in what order),
and what the CLI calls it. The registry, its converters, the discovery snapshot, the ADS
server, the executor's configuration and the CLI all read this table; the protobuf
bindings stay at each API edge, so domain code still speaks no protobuf.

Adding a kind is its message in ``proto/``, an entry here, and its domain rules (its spec
and checks in ``controlplane/registry``, its converters in ``controlplane/api``): see
``docs/architecture.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pilothouse.configuration import TYPE_PREFIX


@dataclass(frozen=True)
class ResourceKind:
    name: str
    """As stored, in manifests and in messages: "ModelRoute"."""
    plural: str
    """As in the API's method names: "ModelRoutes"."""
    collection: str
    """The name segment under its parent: "modelRoutes" in
    tenants/{tenant}/modelRoutes/{route}; "" for a kind with no name of its own."""
    field: str
    """The request field that holds it, and the stem of its converters' names:
    "model_route"."""
    proto_module: str
    """The contract module of its message: "model" for pilothouse/v1/model.proto."""
    parent: str = "Tenant"
    """The kind its resources belong to ("" for one at the top: tenants, keys)."""
    singleton: bool = False
    """Its parent has one of it, named by ``collection`` alone: tenants/{tenant}/quotaPolicy."""
    delivered: bool = False
    """Executors get it over xDS, applied in this table's order (what is referred to
    before what refers to it)."""
    cli_aliases: tuple[str, ...] = ()
    """More words the CLI takes for it, besides its name and plural in lower case."""

    @property
    def module(self) -> str:
        """The generated module of its message: "pilothouse.v1.model_pb2"."""
        return f"pilothouse.v1.{self.proto_module}_pb2"

    @property
    def type_url(self) -> str:
        return TYPE_PREFIX + self.name

    @property
    def cli_words(self) -> tuple[str, ...]:
        return (self.name.lower(), self.plural.lower(), *self.cli_aliases)

    def name_of(self, parent: str, id_: str) -> str:
        """The resource name of ``id_`` under ``parent`` (the parent resource's name; ""
        for a kind at the top; for a singleton, ``id_`` is its parent's id)."""
        if self.singleton:
            return f"{BY_NAME[self.parent].collection}/{id_}/{self.collection}"
        return f"{parent}/{self.collection}/{id_}" if parent else f"{self.collection}/{id_}"


KINDS: tuple[ResourceKind, ...] = (
    ResourceKind(
        "ApiKeyDigest", "ApiKeyDigests", "", "api_key_digest", "discovery", "", delivered=True
    ),
    ResourceKind("Tenant", "Tenants", "tenants", "tenant", "tenant", "", delivered=True),
    ResourceKind(
        "QuotaPolicy",
        "QuotaPolicies",
        "quotaPolicy",
        "quota_policy",
        "tenant",
        singleton=True,
        delivered=True,
        cli_aliases=("quota", "quotas"),
    ),
    ResourceKind("Tool", "Tools", "tools", "tool", "tool", delivered=True),
    ResourceKind("Model", "Models", "models", "model", "model", delivered=True),
    ResourceKind(
        "ModelRoute",
        "ModelRoutes",
        "modelRoutes",
        "model_route",
        "model",
        delivered=True,
        cli_aliases=("route", "routes"),
    ),
    ResourceKind(
        "PromptVersion",
        "PromptVersions",
        "versions",
        "prompt_version",
        "prompt",
        "Prompt",
        delivered=True,
    ),
    ResourceKind("Prompt", "Prompts", "prompts", "prompt", "prompt", delivered=True),
    ResourceKind("Agent", "Agents", "agents", "agent", "agent", delivered=True),
    ResourceKind("Rollout", "Rollouts", "rollouts", "rollout", "rollout", delivered=True),
    ResourceKind(
        "EvalSuite",
        "EvalSuites",
        "evalSuites",
        "eval_suite",
        "eval",
        cli_aliases=("suite", "suites", "eval-suite", "eval-suites"),
    ),
    ResourceKind(
        "ApiKey",
        "ApiKeys",
        "apiKeys",
        "api_key",
        "api_key",
        "",
        cli_aliases=("key", "keys", "api-key", "api-keys"),
    ),
)

BY_NAME = {kind.name: kind for kind in KINDS}
DELIVERED = tuple(kind for kind in KINDS if kind.delivered)
"""The kinds executors get, in the order they apply them."""


def kind(name: str) -> ResourceKind:
    return BY_NAME[name]
