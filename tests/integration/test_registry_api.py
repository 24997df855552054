"""The registry over gRPC, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from controlplane.store import audit as audit_store
from controlplane.store.schema import resources
from pilothouse.v1 import (
    agent_pb2,
    model_pb2,
    prompt_pb2,
    tenant_pb2,
    tool_pb2,
)
from tests import helpers as h
from tests.conftest import Live

Code = grpc.StatusCode


async def test_tool_lifecycle_with_etags(live: Live) -> None:
    tenant = await live.new_tenant()
    md = live.md()
    created = (
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="echo", tool=h.tool()),
            metadata=md,
        )
    ).tool
    assert created.name == f"tenants/{tenant}/tools/echo"
    assert created.etag and created.create_time.seconds > 0
    assert dict(created.input_schema)["required"] == ["text"]

    got = (await live.tools.GetTool(tool_pb2.GetToolRequest(name=created.name), metadata=md)).tool
    assert got == created

    change = tool_pb2.Tool(name=created.name, description="Echo, loudly", etag=created.etag)
    updated = (
        await live.tools.UpdateTool(
            tool_pb2.UpdateToolRequest(
                tool=change, update_mask=field_mask_pb2.FieldMask(paths=["description"])
            ),
            metadata=md,
        )
    ).tool
    assert updated.description == "Echo, loudly"
    assert updated.endpoint == "echo", "fields outside the mask are kept"
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time

    stale = tool_pb2.Tool(name=created.name, description="lost update", etag=created.etag)
    await h.fails(
        live.tools.UpdateTool(
            tool_pb2.UpdateToolRequest(
                tool=stale, update_mask=field_mask_pb2.FieldMask(paths=["description"])
            ),
            metadata=md,
        ),
        Code.ABORTED,
    )
    await h.fails(
        live.tools.DeleteTool(
            tool_pb2.DeleteToolRequest(name=created.name, etag=created.etag), metadata=md
        ),
        Code.ABORTED,
    )
    await live.tools.DeleteTool(
        tool_pb2.DeleteToolRequest(name=created.name, etag=updated.etag), metadata=md
    )
    await h.fails(
        live.tools.GetTool(tool_pb2.GetToolRequest(name=created.name), metadata=md), Code.NOT_FOUND
    )


async def test_create_twice_is_already_exists(live: Live) -> None:
    tenant = await live.new_tenant()
    request = tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="echo", tool=h.tool())
    await live.tools.CreateTool(request, metadata=live.md())
    await h.fails(live.tools.CreateTool(request, metadata=live.md()), Code.ALREADY_EXISTS)


async def test_invalid_tool_names_every_bad_field(live: Live) -> None:
    tenant = await live.new_tenant()
    bad = tool_pb2.Tool(
        kind=tool_pb2.TOOL_KIND_HTTP, endpoint="ftp://example", required_scope="Bad Scope"
    )
    bad.input_schema.update({"type": "objekt"})
    bad.timeout.FromSeconds(-1)
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="bad", tool=bad),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    violations = h.field_violations(err)
    assert set(violations) == {
        "tool.description",
        "tool.input_schema",
        "tool.endpoint",
        "tool.timeout",
        "tool.required_scope",
    }
    assert "draft 2020-12" in violations["tool.input_schema"]


async def test_input_schema_must_be_an_object_schema(live: Live) -> None:
    tenant = await live.new_tenant()
    t = h.tool()
    t.input_schema.Clear()
    t.input_schema.update({"type": "string"})
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="s", tool=t),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "object" in h.field_violations(err)["tool.input_schema"]


async def test_bad_ids_and_names(live: Live) -> None:
    tenant = await live.new_tenant()
    md = live.md()
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="Not_OK", tool=h.tool()),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "tool_id" in h.field_violations(err)
    err = await h.fails(
        live.tools.GetTool(tool_pb2.GetToolRequest(name="tools/echo"), metadata=md),
        Code.INVALID_ARGUMENT,
    )
    assert "name" in h.field_violations(err)
    await h.fails(
        live.tools.ListTools(tool_pb2.ListToolsRequest(parent="tenants/nobody-here"), metadata=md),
        Code.NOT_FOUND,
    )


async def test_unknown_enum_value_is_invalid_argument(live: Live) -> None:
    tenant = await live.new_tenant()
    t = h.tool()
    t.kind = 42  # type: ignore[assignment]
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="x", tool=t),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "tool.kind" in h.field_violations(err)


async def test_pagination_walks_every_tool_once(live: Live) -> None:
    tenant = await live.new_tenant()
    md = live.md()
    ids = [f"tool-{i:02d}" for i in range(7)]
    for tool_id in reversed(ids):
        await live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id=tool_id, tool=h.tool()),
            metadata=md,
        )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await live.tools.ListTools(
            tool_pb2.ListToolsRequest(parent=f"tenants/{tenant}", page_size=3, page_token=token),
            metadata=md,
        )
        seen += [t.name.rsplit("/", 1)[1] for t in page.tools]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids and pages == 3

    first = await live.tools.ListTools(
        tool_pb2.ListToolsRequest(parent=f"tenants/{tenant}", page_size=3), metadata=md
    )
    other = await live.new_tenant()
    err = await h.fails(
        live.tools.ListTools(
            tool_pb2.ListToolsRequest(parent=f"tenants/{other}", page_token=first.next_page_token),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "page_token" in h.field_violations(err)
    await h.fails(
        live.tools.ListTools(
            tool_pb2.ListToolsRequest(parent=f"tenants/{tenant}", page_token="garbage!"),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    await h.fails(
        live.tools.ListTools(
            tool_pb2.ListToolsRequest(parent=f"tenants/{tenant}", page_size=-1), metadata=md
        ),
        Code.INVALID_ARGUMENT,
    )


async def test_models_validate_prices_and_limits(live: Live) -> None:
    tenant = await live.new_tenant()
    err = await h.fails(
        live.models.CreateModel(
            model_pb2.CreateModelRequest(
                parent=f"tenants/{tenant}",
                model_id="m",
                model=h.model(
                    input_price_per_million="-1",
                    output_price_per_million="cheap",
                    max_output_tokens=200000,
                ),
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    violations = h.field_violations(err)
    assert "model.output_price_per_million" in violations  # not a decimal: reported first
    err = await h.fails(
        live.models.CreateModel(
            model_pb2.CreateModelRequest(
                parent=f"tenants/{tenant}",
                model_id="m",
                model=h.model(input_price_per_million="-1", max_output_tokens=200000),
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert set(h.field_violations(err)) == {
        "model.input_price_per_million",
        "model.max_output_tokens",
    }
    err = await h.fails(
        live.models.CreateModel(
            model_pb2.CreateModelRequest(
                parent=f"tenants/{tenant}",
                model_id="m",
                model=h.model(output_price_per_million="0.0000001"),
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "decimal places" in h.field_violations(err)["model.output_price_per_million"]
    created = await live.models.CreateModel(
        model_pb2.CreateModelRequest(
            parent=f"tenants/{tenant}", model_id="m", model=h.model(input_price_per_million="2.50")
        ),
        metadata=live.md(),
    )
    assert created.model.input_price_per_million == "2.50", "prices are exact decimals"


async def _registry_with_agent(live: Live) -> str:
    tenant = await live.new_tenant()
    md = live.md()
    parent = f"tenants/{tenant}"
    await live.tools.CreateTool(
        tool_pb2.CreateToolRequest(parent=parent, tool_id="echo", tool=h.tool()), metadata=md
    )
    await live.models.CreateModel(
        model_pb2.CreateModelRequest(parent=parent, model_id="small", model=h.model()), metadata=md
    )
    await live.models.CreateModelRoute(
        model_pb2.CreateModelRouteRequest(
            parent=parent, model_route_id="default", model_route=h.route(tenant, "small")
        ),
        metadata=md,
    )
    await live.prompts.CreatePrompt(
        prompt_pb2.CreatePromptRequest(
            parent=parent, prompt_id="support", prompt=prompt_pb2.Prompt()
        ),
        metadata=md,
    )
    v = await live.prompts.CreatePromptVersion(
        prompt_pb2.CreatePromptVersionRequest(
            parent=f"{parent}/prompts/support", prompt_version=h.version(tenant, "default")
        ),
        metadata=md,
    )
    await live.prompts.SetPromptLabel(
        prompt_pb2.SetPromptLabelRequest(
            name=f"{parent}/prompts/support", label="production", version=v.prompt_version.name
        ),
        metadata=md,
    )
    await live.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            parent=parent, agent_id="helper", agent=h.agent(tenant, "support", ["echo"])
        ),
        metadata=md,
    )
    return tenant


async def test_references_must_exist_and_protect_their_targets(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    md = live.md()
    parent = f"tenants/{tenant}"

    err = await h.fails(
        live.agents.CreateAgent(
            agent_pb2.CreateAgentRequest(
                parent=parent, agent_id="broken", agent=h.agent(tenant, "support", ["echo", "nope"])
            ),
            metadata=md,
        ),
        Code.FAILED_PRECONDITION,
    )
    violations = h.precondition_violations(err)
    assert [(v.type, v.subject) for v in violations] == [
        ("MISSING_REFERENCE", f"{parent}/tools/nope")
    ]
    assert "agent.tools[1]" in violations[0].description

    err = await h.fails(
        live.tools.DeleteTool(tool_pb2.DeleteToolRequest(name=f"{parent}/tools/echo"), metadata=md),
        Code.FAILED_PRECONDITION,
    )
    [used] = h.precondition_violations(err)
    assert (used.type, used.subject) == ("IN_USE", f"{parent}/agents/helper")

    await h.fails(
        live.models.DeleteModel(
            model_pb2.DeleteModelRequest(name=f"{parent}/models/small"), metadata=md
        ),
        Code.FAILED_PRECONDITION,
    )
    await h.fails(
        live.models.DeleteModelRoute(
            model_pb2.DeleteModelRouteRequest(name=f"{parent}/modelRoutes/default"), metadata=md
        ),
        Code.FAILED_PRECONDITION,
    )
    await h.fails(
        live.prompts.DeletePrompt(
            prompt_pb2.DeletePromptRequest(name=f"{parent}/prompts/support"), metadata=md
        ),
        Code.FAILED_PRECONDITION,
    )

    # Once the agent is gone, everything it used may go, in dependency order.
    await live.agents.DeleteAgent(
        agent_pb2.DeleteAgentRequest(name=f"{parent}/agents/helper"), metadata=md
    )
    await live.tools.DeleteTool(
        tool_pb2.DeleteToolRequest(name=f"{parent}/tools/echo"), metadata=md
    )
    await live.prompts.DeletePrompt(
        prompt_pb2.DeletePromptRequest(name=f"{parent}/prompts/support"), metadata=md
    )
    await live.models.DeleteModelRoute(
        model_pb2.DeleteModelRouteRequest(name=f"{parent}/modelRoutes/default"), metadata=md
    )
    await live.models.DeleteModel(
        model_pb2.DeleteModelRequest(name=f"{parent}/models/small"), metadata=md
    )


async def test_references_cannot_cross_tenants(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    other = await live.new_tenant()
    err = await h.fails(
        live.agents.CreateAgent(
            agent_pb2.CreateAgentRequest(
                parent=f"tenants/{other}",
                agent_id="thief",
                agent=h.agent(tenant, "support", ["echo"]),
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "agent.prompt" in h.field_violations(err)


async def test_agent_needs_the_label_it_runs(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}"
    err = await h.fails(
        live.agents.CreateAgent(
            agent_pb2.CreateAgentRequest(
                parent=parent,
                agent_id="canary-user",
                agent=h.agent(tenant, "support", [], prompt_label="canary"),
            ),
            metadata=live.md(),
        ),
        Code.FAILED_PRECONDITION,
    )
    assert "no label 'canary'" in err.details()


async def test_agent_update_mask_and_validation(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    name = f"tenants/{tenant}/agents/helper"
    md = live.md()
    change = agent_pb2.Agent(name=name)
    change.default_budget.max_steps = 8
    change.default_budget.max_usd = "0.25"
    updated = (
        await live.agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(
                agent=change,
                update_mask=field_mask_pb2.FieldMask(
                    paths=["default_budget.max_steps", "default_budget.max_usd"]
                ),
            ),
            metadata=md,
        )
    ).agent
    assert updated.default_budget.max_steps == 8
    assert updated.default_budget.max_usd == "0.25"
    assert list(updated.tools) == [f"tenants/{tenant}/tools/echo"]

    again = await live.agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=change,
            update_mask=field_mask_pb2.FieldMask(paths=["default_budget.max_steps"]),
        ),
        metadata=md,
    )
    assert again.agent.etag == updated.etag, "an update that changes nothing keeps the etag"

    err = await h.fails(
        live.agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(
                agent=change, update_mask=field_mask_pb2.FieldMask(paths=["colour"])
            ),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "update_mask" in h.field_violations(err)

    bad = agent_pb2.Agent(name=name)
    bad.guardrail_policy.blocked_patterns.append("([unclosed")
    bad.approval_policy.always_require.append(f"tenants/{tenant}/tools/other")
    err = await h.fails(
        live.agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(
                agent=bad,
                update_mask=field_mask_pb2.FieldMask(paths=["guardrail_policy", "approval_policy"]),
            ),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert set(h.field_violations(err)) == {
        "agent.guardrail_policy.blocked_patterns[0]",
        "agent.approval_policy.always_require[0]",
    }


async def test_prompt_versions_are_content_addressed(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}/prompts/support"
    md = live.md()
    content = h.version(tenant, "default", "Be brief with {{customer}}.")
    first = await live.prompts.CreatePromptVersion(
        prompt_pb2.CreatePromptVersionRequest(parent=parent, prompt_version=content), metadata=md
    )
    second = await live.prompts.CreatePromptVersion(
        prompt_pb2.CreatePromptVersionRequest(parent=parent, prompt_version=content), metadata=md
    )
    assert first.created and not second.created
    assert first.prompt_version.name == second.prompt_version.name
    assert first.prompt_version.name.endswith("/" + first.prompt_version.content_hash[:16])
    assert first.prompt_version.create_time == second.prompt_version.create_time

    versions = await live.prompts.ListPromptVersions(
        prompt_pb2.ListPromptVersionsRequest(parent=parent), metadata=md
    )
    assert len(versions.prompt_versions) == 2

    err = await h.fails(
        live.prompts.CreatePromptVersion(
            prompt_pb2.CreatePromptVersionRequest(
                parent=parent,
                prompt_version=h.version(tenant, "default", "Hello {{customer}} from {{city}}"),
            ),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "city" in h.field_violations(err)["prompt_version.template"]


async def test_label_moves_are_atomic_and_audited(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}/prompts/support"
    md = live.md()
    prompt = (
        await live.prompts.GetPrompt(prompt_pb2.GetPromptRequest(name=parent), metadata=md)
    ).prompt
    old = prompt.labels["production"]
    new = (
        await live.prompts.CreatePromptVersion(
            prompt_pb2.CreatePromptVersionRequest(
                parent=parent, prompt_version=h.version(tenant, "default", "v2 for {{customer}}")
            ),
            metadata=md,
        )
    ).prompt_version.name
    moved = await live.prompts.SetPromptLabel(
        prompt_pb2.SetPromptLabelRequest(
            name=parent, label="production", version=new, etag=prompt.etag
        ),
        metadata=md,
    )
    assert moved.previous_version == old
    assert moved.prompt.labels["production"] == new
    await h.fails(
        live.prompts.SetPromptLabel(
            prompt_pb2.SetPromptLabelRequest(
                name=parent, label="production", version=old, etag=prompt.etag
            ),
            metadata=md,
        ),
        Code.ABORTED,
    )
    await h.fails(
        live.prompts.SetPromptLabel(
            prompt_pb2.SetPromptLabelRequest(
                name=parent, label="production", version=f"{parent}/versions/0123456789abcdef"
            ),
            metadata=md,
        ),
        Code.NOT_FOUND,
    )
    async with live.plane.db.snapshot() as conn:
        events = await audit_store.page(conn, tenant, limit=1000)
    moves = [e for e in events if e.action == "Prompt.label.move"]
    assert [m.resource for m in moves] == [parent, parent]
    assert old in moves[-1].details and new in moves[-1].details
    assert moves[-1].actor.startswith("apiKeys/")


async def test_labels_are_output_only_on_prompt_update(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    name = f"tenants/{tenant}/prompts/support"
    err = await h.fails(
        live.prompts.UpdatePrompt(
            prompt_pb2.UpdatePromptRequest(
                prompt=prompt_pb2.Prompt(name=name, labels={"production": "x"}),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "output only" in err.details()


async def test_tenant_delete_needs_force_when_not_empty(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    name = f"tenants/{tenant}"
    md = live.md()
    err = await h.fails(
        live.tenants.DeleteTenant(tenant_pb2.DeleteTenantRequest(name=name), metadata=md),
        Code.FAILED_PRECONDITION,
    )
    assert h.precondition_violations(err)[0].type == "NOT_EMPTY"
    await live.tenants.DeleteTenant(
        tenant_pb2.DeleteTenantRequest(name=name, force=True), metadata=md
    )
    await h.fails(
        live.tenants.GetTenant(tenant_pb2.GetTenantRequest(name=name), metadata=md), Code.NOT_FOUND
    )
    await h.fails(
        live.agents.GetAgent(agent_pb2.GetAgentRequest(name=f"{name}/agents/helper"), metadata=md),
        Code.NOT_FOUND,
    )


async def test_quota_policy_defaults_then_updates(live: Live) -> None:
    tenant = await live.new_tenant()
    name = f"tenants/{tenant}/quotaPolicy"
    md = live.md()
    policy = (
        await live.tenants.GetQuotaPolicy(tenant_pb2.GetQuotaPolicyRequest(name=name), metadata=md)
    ).quota_policy
    assert not policy.HasField("usd_per_day"), "unset means unlimited"
    change = tenant_pb2.QuotaPolicy(
        name=name,
        usd_per_day="25.00",
        max_concurrent_runs=0,
        failure_mode=tenant_pb2.FAILURE_MODE_FAIL_OPEN,
        etag=policy.etag,
    )
    updated = (
        await live.tenants.UpdateQuotaPolicy(
            tenant_pb2.UpdateQuotaPolicyRequest(quota_policy=change), metadata=md
        )
    ).quota_policy
    assert updated.usd_per_day == "25.00"
    assert updated.HasField("max_concurrent_runs") and updated.max_concurrent_runs == 0
    assert updated.failure_mode == tenant_pb2.FAILURE_MODE_FAIL_OPEN
    await h.fails(
        live.tenants.UpdateQuotaPolicy(
            tenant_pb2.UpdateQuotaPolicyRequest(quota_policy=change), metadata=md
        ),
        Code.ABORTED,
    )
    negative = tenant_pb2.QuotaPolicy(name=name, tokens_per_minute=-5)
    err = await h.fails(
        live.tenants.UpdateQuotaPolicy(
            tenant_pb2.UpdateQuotaPolicyRequest(
                quota_policy=negative,
                update_mask=field_mask_pb2.FieldMask(paths=["tokens_per_minute"]),
            ),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "quota_policy.tokens_per_minute" in h.field_violations(err)


async def test_pinned_versions_and_prompt_deletion(live: Live) -> None:
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}"
    md = live.md()
    prompt = f"{parent}/prompts/support"
    version = (
        await live.prompts.GetPrompt(prompt_pb2.GetPromptRequest(name=prompt), metadata=md)
    ).prompt.labels["production"]
    pinned = h.agent(tenant, "support", [], prompt_version=version)
    created = await live.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(parent=parent, agent_id="pinned", agent=pinned), metadata=md
    )
    assert created.agent.prompt_version == version
    await live.agents.DeleteAgent(
        agent_pb2.DeleteAgentRequest(name=f"{parent}/agents/helper"), metadata=md
    )
    err = await h.fails(
        live.prompts.DeletePrompt(prompt_pb2.DeletePromptRequest(name=prompt), metadata=md),
        Code.FAILED_PRECONDITION,
    )
    assert f"{parent}/agents/pinned" in {v.subject for v in h.precondition_violations(err)}
    await live.agents.DeleteAgent(
        agent_pb2.DeleteAgentRequest(name=f"{parent}/agents/pinned"), metadata=md
    )
    await live.prompts.DeletePrompt(prompt_pb2.DeletePromptRequest(name=prompt), metadata=md)
    await h.fails(
        live.prompts.GetPromptVersion(
            prompt_pb2.GetPromptVersionRequest(name=version), metadata=md
        ),
        Code.NOT_FOUND,
    )
    other = h.agent(
        tenant, "support", [], prompt_version=f"{parent}/prompts/other/versions/0123456789abcdef"
    )
    err = await h.fails(
        live.agents.CreateAgent(
            agent_pb2.CreateAgentRequest(parent=parent, agent_id="bad", agent=other), metadata=md
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "agent.prompt_version" in h.field_violations(err)


async def test_models_name_a_credential_never_an_environment_variable(live: Live) -> None:
    tenant = await live.new_tenant()
    parent = f"tenants/{tenant}"
    for field, value in (("api_key_env", "PILOTHOUSE_EXECUTOR_KEY"), ("credential", "Not A Name")):
        err = await h.fails(
            live.models.CreateModel(
                model_pb2.CreateModelRequest(
                    parent=parent, model_id="m", model=h.model(**{field: value})
                ),
                metadata=live.md(),
            ),
            Code.INVALID_ARGUMENT,
        )
        assert f"model.{field}" in h.field_violations(err)
    created = await live.models.CreateModel(
        model_pb2.CreateModelRequest(
            parent=parent, model_id="m", model=h.model(credential="openai-prod")
        ),
        metadata=live.md(),
    )
    assert created.model.credential == "openai-prod"


async def test_a_model_stored_with_api_key_env_is_told_how_to_migrate(live: Live) -> None:
    """A model written before credentials existed fails its next update with a message
    naming the field, and is fixed by naming a credential and clearing api_key_env."""
    tenant = await live.new_tenant()
    name = f"tenants/{tenant}/models/legacy"
    await live.models.CreateModel(
        model_pb2.CreateModelRequest(
            parent=f"tenants/{tenant}", model_id="legacy", model=h.model()
        ),
        metadata=live.md(),
    )
    async with live.plane.db.transaction() as conn:
        row = (
            await conn.execute(
                sa.select(resources.c.spec).where(
                    resources.c.tenant == tenant, resources.c.id == "legacy"
                )
            )
        ).one()
        spec = {**json.loads(row.spec), "api_key_env": "OPENAI_API_KEY"}
        await conn.execute(
            resources.update()
            .where(resources.c.tenant == tenant, resources.c.id == "legacy")
            .values(spec=json.dumps(spec))
        )
    stored = (
        await live.models.GetModel(model_pb2.GetModelRequest(name=name), metadata=live.md())
    ).model
    assert stored.api_key_env == "OPENAI_API_KEY"
    err = await h.fails(
        live.models.UpdateModel(
            model_pb2.UpdateModelRequest(
                model=model_pb2.Model(name=name, input_price_per_million="1"),
                update_mask=field_mask_pb2.FieldMask(paths=["input_price_per_million"]),
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "credential" in h.field_violations(err)["model.api_key_env"]
    fixed = await live.models.UpdateModel(
        model_pb2.UpdateModelRequest(
            model=model_pb2.Model(name=name, credential="openai"),
            update_mask=field_mask_pb2.FieldMask(paths=["credential", "api_key_env"]),
        ),
        metadata=live.md(),
    )
    assert fixed.model.credential == "openai" and not fixed.model.api_key_env


async def test_tenant_patterns_are_checked_with_the_executors_engine(live: Live) -> None:
    """A pattern RE2 cannot run is refused at the API, naming the field, wherever a
    tenant may write one."""
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}"
    tool = h.tool()
    tool.input_schema.update(
        {"type": "object", "properties": {"text": {"type": "string", "pattern": r"(a)\1"}}}
    )
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=parent, tool_id="backref", tool=tool),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "RE2" in h.field_violations(err)["tool.input_schema"]
    agent = h.agent(tenant, "support", ["echo"])
    agent.guardrail_policy.blocked_patterns.append(r"secret(?=s)")
    err = await h.fails(
        live.agents.CreateAgent(
            agent_pb2.CreateAgentRequest(parent=parent, agent_id="lookahead", agent=agent),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "RE2" in h.field_violations(err)["agent.guardrail_policy.blocked_patterns[0]"]
    # What backtracks on Python's engine runs in linear time on RE2: accepted.
    agent.guardrail_policy.blocked_patterns[0] = r"(a+)+$"
    await live.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(parent=parent, agent_id="linear", agent=agent),
        metadata=live.md(),
    )


async def test_every_tenant_controlled_size_is_bounded(live: Live) -> None:
    """The 4.5 MB tool schema that once stopped every executor's configuration is refused
    at the API, as is each other oversized field, naming it."""
    tenant = await _registry_with_agent(live)
    parent = f"tenants/{tenant}"
    huge = h.tool()
    huge.input_schema.update({"type": "object", "description": "x" * 4_500_000})
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=parent, tool_id="huge", tool=huge),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "bytes" in h.field_violations(err)["tool.input_schema"]
    scripted = h.model()
    for _ in range(101):
        scripted.scripted.rules.add(answer="a" * 70_000)
    err = await h.fails(
        live.models.CreateModel(
            model_pb2.CreateModelRequest(parent=parent, model_id="chatty", model=scripted),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    violations = h.field_violations(err)
    assert "model.scripted.rules" in violations
    assert "model.scripted.rules[0].answer" in violations
    long_url = h.tool()
    long_url.kind, long_url.endpoint = tool_pb2.TOOL_KIND_HTTP, "https://x.example/" + "a" * 3000
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=parent, tool_id="far", tool=long_url),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "2048" in h.field_violations(err)["tool.endpoint"]
