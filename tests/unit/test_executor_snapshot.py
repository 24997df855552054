"""The executor's own checks of a snapshot."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from dataplane.backoff import Backoff
from dataplane.config.snapshot import ConfigError, ExecutorConfig, parse, parse_tenant
from pilothouse.configuration import TYPE_PREFIX
from pilothouse.v1 import agent_pb2, discovery_pb2, model_pb2, prompt_pb2, tool_pb2


def pack(*messages: object) -> dict[str, list[any_pb2.Any]]:
    out: dict[str, list[any_pb2.Any]] = {}
    for m in messages:
        a = any_pb2.Any()
        a.Pack(m)  # type: ignore[arg-type]
        out.setdefault(a.type_url, []).append(a)
    return out


def config(*extra: object, schema: dict[str, object] | None = None) -> dict[str, list[any_pb2.Any]]:
    tool = tool_pb2.Tool(name="tenants/a/tools/t", kind=tool_pb2.TOOL_KIND_BUILTIN, endpoint="echo")
    tool.input_schema.update(schema or {"type": "object"})
    version = prompt_pb2.PromptVersion(
        name="tenants/a/prompts/p/versions/0123456789abcdef",
        template="hi",
        model_route="tenants/a/modelRoutes/r",
    )
    return pack(
        tool,
        model_pb2.Model(name="tenants/a/models/m"),
        model_pb2.ModelRoute(
            name="tenants/a/modelRoutes/r",
            targets=[model_pb2.ModelRouteTarget(model="tenants/a/models/m", weight=1)],
        ),
        version,
        prompt_pb2.Prompt(name="tenants/a/prompts/p", labels={"production": version.name}),
        agent_pb2.Agent(name="tenants/a/agents/x", prompt="tenants/a/prompts/p", tools=[tool.name]),
        *extra,
    )


def test_a_consistent_snapshot_parses_and_round_trips() -> None:
    parsed = parse("v1", config())
    agent = parsed.get(agent_pb2.Agent, "tenants/a/agents/x")
    assert agent is not None
    version = parsed.agent_prompt_version(agent)
    assert version is not None and version.template == "hi"
    assert parsed.tenants["a"].version == "v1"
    again = ExecutorConfig.from_proto(parsed.to_proto())
    assert again.version == parsed.version and again.tenant_versions() == {"tenants/a": "v1"}
    assert again.get(tool_pb2.Tool, "tenants/a/tools/t") is not None


def test_missing_references_and_bad_schemas_are_rejected() -> None:
    dangling = agent_pb2.Agent(
        name="tenants/a/agents/y", prompt="tenants/a/prompts/p", tools=["tenants/a/tools/nope"]
    )
    with pytest.raises(ConfigError, match="missing Tool tenants/a/tools/nope"):
        parse("v2", config(dangling))
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        parse("v3", config(schema={"type": "objekt"}))


def test_resources_must_match_their_type() -> None:
    resources = config()
    tool_url = TYPE_PREFIX + "Tool"
    resources[TYPE_PREFIX + "Model"].append(resources[tool_url][0])
    with pytest.raises(ConfigError, match="came as"):
        parse("v4", resources)


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    for attempt in range(12):
        bound = min(1.0, 0.1 * 2**attempt)
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(0 <= d <= bound for d in delays)
        assert len(set(delays)) > 1


def test_a_tools_input_validator_is_built_once_per_snapshot() -> None:
    schema = {"type": "object", "required": ["text"]}
    first, second = parse("v1", config(schema=schema)), parse("v2", config(schema=schema))
    tool = first.get(tool_pb2.Tool, "tenants/a/tools/t")
    assert tool is not None
    validator = first.input_validator(tool)
    assert first.input_validator(tool) is validator
    assert not validator.is_valid({}) and validator.is_valid({"text": "hi"})
    other = second.get(tool_pb2.Tool, "tenants/a/tools/t")
    assert other is not None and second.input_validator(other) is not validator


def bundle(tenant: str, version: str, *messages: object) -> discovery_pb2.TenantConfiguration:
    out = discovery_pb2.TenantConfiguration(name=f"tenants/{tenant}", version=version)
    for m in messages:
        out.resources.add().Pack(m)  # type: ignore[arg-type]
    return out


def test_a_tenants_configuration_holds_only_its_own_resources() -> None:
    mine = tool_pb2.Tool(name="tenants/a/tools/t", kind=tool_pb2.TOOL_KIND_BUILTIN, endpoint="x")
    mine.input_schema.update({"type": "object"})
    theirs = tool_pb2.Tool(name="tenants/b/tools/t", kind=tool_pb2.TOOL_KIND_BUILTIN, endpoint="x")
    theirs.input_schema.update({"type": "object"})
    key = discovery_pb2.ApiKeyDigest(name="apiKeys/k", tenant="tenants/b")
    assert parse_tenant(bundle("a", "1", mine)).get(tool_pb2.Tool, mine.name) is not None
    for smuggled in (theirs, key):
        with pytest.raises(ConfigError, match="is not tenant a's"):
            parse_tenant(bundle("a", "2", mine, smuggled))
    with pytest.raises(ConfigError, match="does not name a tenant"):
        parse_tenant(bundle("a/b", "1"))


def test_tenants_change_alone_and_keep_their_validators() -> None:
    a = parse_tenant(bundle("a", "1", *[m for ms in config().values() for m in _unpacked(ms)]))
    key = discovery_pb2.ApiKeyDigest(name="apiKeys/k", tenant="tenants/b", secret_sha256="00")
    b = parse_tenant(bundle("b", "1", key))
    both = ExecutorConfig().changed({"a": a, "b": b})
    tool = both.get(tool_pb2.Tool, "tenants/a/tools/t")
    assert tool is not None and both.get(discovery_pb2.ApiKeyDigest, "apiKeys/k") == key
    validator = both.input_validator(tool)
    b2 = parse_tenant(bundle("b", "2"))
    later = both.changed({"b": b2})
    assert later.input_validator(tool) is validator, "tenant a's configuration is shared"
    assert later.get(discovery_pb2.ApiKeyDigest, "apiKeys/k") is None
    assert later.version != both.version
    assert later.changed({}, ["b"]).tenant_versions() == {"tenants/a": "1"}


def _unpacked(items: list[any_pb2.Any]) -> list[object]:
    from dataplane.config.snapshot import MESSAGES

    out = []
    for item in items:
        message = MESSAGES[item.type_url.rsplit(".", 1)[-1]]()
        item.Unpack(message)
        out.append(message)
    return out
