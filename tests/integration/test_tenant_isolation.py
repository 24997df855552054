"""A key confined to tenant A can neither read nor change tenant B, through any RPC.

The matrix is built from the contract's own descriptors: a new RPC without a case here
fails ``test_matrix_covers_every_rpc``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from controlplane.server import PILOTHOUSE_SERVICES
from pilothouse.v1 import (
    agent_pb2,
    api_key_pb2,
    approval_pb2,
    audit_pb2,
    discovery_pb2,
    eval_pb2,
    feedback_pb2,
    model_pb2,
    prompt_pb2,
    quota_pb2,
    rollout_pb2,
    telemetry_pb2,
    tenant_pb2,
    tool_pb2,
)
from tests import helpers as h
from tests.conftest import Live
from tests.integration.test_registry_api import _registry_with_agent

Code = grpc.StatusCode


@dataclass
class Target:
    """Tenant B and the names of what it holds."""

    tenant: str
    version: str
    key_name: str

    @property
    def parent(self) -> str:
        return f"tenants/{self.tenant}"


Build = Callable[[Target], Message]

CASES: dict[str, Build] = {
    # ToolService
    "ToolService/GetTool": lambda t: tool_pb2.GetToolRequest(name=f"{t.parent}/tools/echo"),
    "ToolService/ListTools": lambda t: tool_pb2.ListToolsRequest(parent=t.parent),
    "ToolService/CreateTool": lambda t: tool_pb2.CreateToolRequest(
        parent=t.parent, tool_id="planted", tool=h.tool()
    ),
    "ToolService/UpdateTool": lambda t: tool_pb2.UpdateToolRequest(
        tool=h.tool(name=f"{t.parent}/tools/echo", description="defaced")
    ),
    "ToolService/DeleteTool": lambda t: tool_pb2.DeleteToolRequest(name=f"{t.parent}/tools/echo"),
    # ModelService
    "ModelService/GetModel": lambda t: model_pb2.GetModelRequest(name=f"{t.parent}/models/small"),
    "ModelService/ListModels": lambda t: model_pb2.ListModelsRequest(parent=t.parent),
    "ModelService/CreateModel": lambda t: model_pb2.CreateModelRequest(
        parent=t.parent, model_id="planted", model=h.model()
    ),
    "ModelService/UpdateModel": lambda t: model_pb2.UpdateModelRequest(
        model=h.model(name=f"{t.parent}/models/small", input_price_per_million="99")
    ),
    "ModelService/DeleteModel": lambda t: model_pb2.DeleteModelRequest(
        name=f"{t.parent}/models/small"
    ),
    "ModelService/GetModelRoute": lambda t: model_pb2.GetModelRouteRequest(
        name=f"{t.parent}/modelRoutes/default"
    ),
    "ModelService/ListModelRoutes": lambda t: model_pb2.ListModelRoutesRequest(parent=t.parent),
    "ModelService/CreateModelRoute": lambda t: model_pb2.CreateModelRouteRequest(
        parent=t.parent, model_route_id="planted", model_route=h.route(t.tenant, "small")
    ),
    "ModelService/UpdateModelRoute": lambda t: model_pb2.UpdateModelRouteRequest(
        model_route=model_pb2.ModelRoute(name=f"{t.parent}/modelRoutes/default")
    ),
    "ModelService/DeleteModelRoute": lambda t: model_pb2.DeleteModelRouteRequest(
        name=f"{t.parent}/modelRoutes/default"
    ),
    # PromptService
    "PromptService/GetPrompt": lambda t: prompt_pb2.GetPromptRequest(
        name=f"{t.parent}/prompts/support"
    ),
    "PromptService/ListPrompts": lambda t: prompt_pb2.ListPromptsRequest(parent=t.parent),
    "PromptService/CreatePrompt": lambda t: prompt_pb2.CreatePromptRequest(
        parent=t.parent, prompt_id="planted", prompt=prompt_pb2.Prompt()
    ),
    "PromptService/UpdatePrompt": lambda t: prompt_pb2.UpdatePromptRequest(
        prompt=prompt_pb2.Prompt(name=f"{t.parent}/prompts/support", description="defaced")
    ),
    "PromptService/DeletePrompt": lambda t: prompt_pb2.DeletePromptRequest(
        name=f"{t.parent}/prompts/support"
    ),
    "PromptService/CreatePromptVersion": lambda t: prompt_pb2.CreatePromptVersionRequest(
        parent=f"{t.parent}/prompts/support",
        prompt_version=h.version(t.tenant, "default", "Planted {{customer}}"),
    ),
    "PromptService/GetPromptVersion": lambda t: prompt_pb2.GetPromptVersionRequest(name=t.version),
    "PromptService/ListPromptVersions": lambda t: prompt_pb2.ListPromptVersionsRequest(
        parent=f"{t.parent}/prompts/support"
    ),
    "PromptService/SetPromptLabel": lambda t: prompt_pb2.SetPromptLabelRequest(
        name=f"{t.parent}/prompts/support", label="production", version=t.version
    ),
    # AgentRegistryService
    "AgentRegistryService/GetAgent": lambda t: agent_pb2.GetAgentRequest(
        name=f"{t.parent}/agents/helper"
    ),
    "AgentRegistryService/ListAgents": lambda t: agent_pb2.ListAgentsRequest(parent=t.parent),
    "AgentRegistryService/CreateAgent": lambda t: agent_pb2.CreateAgentRequest(
        parent=t.parent, agent_id="planted", agent=h.agent(t.tenant, "support", ["echo"])
    ),
    "AgentRegistryService/UpdateAgent": lambda t: agent_pb2.UpdateAgentRequest(
        agent=agent_pb2.Agent(name=f"{t.parent}/agents/helper", description="defaced")
    ),
    "AgentRegistryService/DeleteAgent": lambda t: agent_pb2.DeleteAgentRequest(
        name=f"{t.parent}/agents/helper"
    ),
    # TenantService
    "TenantService/GetTenant": lambda t: tenant_pb2.GetTenantRequest(name=t.parent),
    "TenantService/ListTenants": lambda t: tenant_pb2.ListTenantsRequest(),
    "TenantService/CreateTenant": lambda t: tenant_pb2.CreateTenantRequest(
        tenant_id=f"{t.tenant}-twin", tenant=tenant_pb2.Tenant()
    ),
    "TenantService/UpdateTenant": lambda t: tenant_pb2.UpdateTenantRequest(
        tenant=tenant_pb2.Tenant(name=t.parent, display_name="defaced")
    ),
    "TenantService/DeleteTenant": lambda t: tenant_pb2.DeleteTenantRequest(
        name=t.parent, force=True
    ),
    "TenantService/GetQuotaPolicy": lambda t: tenant_pb2.GetQuotaPolicyRequest(
        name=f"{t.parent}/quotaPolicy"
    ),
    "TenantService/UpdateQuotaPolicy": lambda t: tenant_pb2.UpdateQuotaPolicyRequest(
        quota_policy=tenant_pb2.QuotaPolicy(name=f"{t.parent}/quotaPolicy", usd_per_day="0")
    ),
    # ApiKeyService
    "ApiKeyService/CreateApiKey": lambda t: api_key_pb2.CreateApiKeyRequest(
        api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_OPERATOR, tenant=t.parent)
    ),
    "ApiKeyService/GetApiKey": lambda t: api_key_pb2.GetApiKeyRequest(name=t.key_name),
    "ApiKeyService/ListApiKeys": lambda t: api_key_pb2.ListApiKeysRequest(tenant=t.parent),
    "ApiKeyService/DeleteApiKey": lambda t: api_key_pb2.DeleteApiKeyRequest(name=t.key_name),
    # ApprovalService
    "ApprovalService/CreateApproval": lambda t: approval_pb2.CreateApprovalRequest(
        parent=t.parent,
        approval=approval_pb2.Approval(
            run=f"{t.parent}/runs/00000000-0000-0000-0000-000000000000",
            agent=f"{t.parent}/agents/helper",
            step=1,
            tool="echo",
        ),
    ),
    "ApprovalService/GetApproval": lambda t: approval_pb2.GetApprovalRequest(
        name=f"{t.parent}/approvals/x.1.0"
    ),
    "ApprovalService/ListApprovals": lambda t: approval_pb2.ListApprovalsRequest(parent=t.parent),
    "ApprovalService/DecideApproval": lambda t: approval_pb2.DecideApprovalRequest(
        name=f"{t.parent}/approvals/x.1.0", decision=approval_pb2.DECISION_APPROVE
    ),
    "ApprovalService/WatchDecisions": lambda t: approval_pb2.WatchDecisionsRequest(),
    # ExecutorService: executors serve every tenant and hold no tenant's data.
    "ExecutorService/ListExecutors": lambda t: discovery_pb2.ListExecutorsRequest(),
    # TelemetryService: reports about tenant B's runs, and B's usage and runs.
    "TelemetryService/StreamEvents": lambda t: telemetry_pb2.StreamEventsRequest(
        executor="x",
        batch_sequence=1,
        events=[
            telemetry_pb2.TelemetryEvent(
                id="forged:1",
                run=f"{t.parent}/runs/00000000-0000-0000-0000-000000000002",
                time=timestamp_pb2.Timestamp(seconds=1),
                sequence=1,
                run_waiting=telemetry_pb2.RunWaiting(step=1, tool="echo"),
            )
        ],
    ),
    "TelemetryService/QueryUsage": lambda t: telemetry_pb2.QueryUsageRequest(parent=t.parent),
    "TelemetryService/GetRunSummary": lambda t: telemetry_pb2.GetRunSummaryRequest(
        name=f"{t.parent}/runs/00000000-0000-0000-0000-000000000002"
    ),
    "TelemetryService/ListRunSummaries": lambda t: telemetry_pb2.ListRunSummariesRequest(
        parent=t.parent
    ),
    # QuotaService: leases of tenant B's limits, and its balance.
    "QuotaService/AcquireLease": lambda t: quota_pb2.AcquireLeaseRequest(
        tenant=t.parent, executor="intruder"
    ),
    "QuotaService/ReleaseLease": lambda t: quota_pb2.ReleaseLeaseRequest(
        tenant=t.parent, lease_id="00000000-0000-0000-0000-000000000003"
    ),
    "QuotaService/GetBalance": lambda t: quota_pb2.GetBalanceRequest(tenant=t.parent),
    # FeedbackService: feedback on tenant B's runs.
    "FeedbackService/RecordFeedback": lambda t: feedback_pb2.RecordFeedbackRequest(
        run=f"{t.parent}/runs/00000000-0000-0000-0000-000000000004", score=0.0
    ),
    "FeedbackService/ListFeedback": lambda t: feedback_pb2.ListFeedbackRequest(parent=t.parent),
    # RolloutService: tenant B's rollouts.
    "RolloutService/CreateRollout": lambda t: rollout_pb2.CreateRolloutRequest(
        parent=t.parent,
        rollout_id="canary",
        rollout=rollout_pb2.Rollout(
            prompt=t.version.split("/versions/")[0],
            candidate_version=t.version,
            steps=[rollout_pb2.RolloutStep(weight_bps=500)],
        ),
    ),
    "RolloutService/GetRollout": lambda t: rollout_pb2.GetRolloutRequest(
        name=f"{t.parent}/rollouts/canary"
    ),
    "RolloutService/ListRollouts": lambda t: rollout_pb2.ListRolloutsRequest(parent=t.parent),
    "RolloutService/PauseRollout": lambda t: rollout_pb2.PauseRolloutRequest(
        name=f"{t.parent}/rollouts/canary"
    ),
    "RolloutService/ResumeRollout": lambda t: rollout_pb2.ResumeRolloutRequest(
        name=f"{t.parent}/rollouts/canary"
    ),
    "RolloutService/PromoteRollout": lambda t: rollout_pb2.PromoteRolloutRequest(
        name=f"{t.parent}/rollouts/canary"
    ),
    "RolloutService/AbortRollout": lambda t: rollout_pb2.AbortRolloutRequest(
        name=f"{t.parent}/rollouts/canary"
    ),
    "RolloutService/WatchRollout": lambda t: rollout_pb2.WatchRolloutRequest(
        name=f"{t.parent}/rollouts/canary"
    ),
    # EvalService
    "EvalService/GetEvalSuite": lambda t: eval_pb2.GetEvalSuiteRequest(
        name=f"{t.parent}/evalSuites/basics"
    ),
    "EvalService/ListEvalSuites": lambda t: eval_pb2.ListEvalSuitesRequest(parent=t.parent),
    "EvalService/CreateEvalSuite": lambda t: eval_pb2.CreateEvalSuiteRequest(
        parent=t.parent,
        eval_suite_id="intruder",
        eval_suite=eval_pb2.EvalSuite(
            agent=f"{t.parent}/agents/helper",
            cases=[
                eval_pb2.EvalCase(
                    id="one",
                    input="x",
                    expectations=[eval_pb2.Expectation(grader=eval_pb2.GRADER_CONTAINS, value="x")],
                )
            ],
        ),
    ),
    "EvalService/UpdateEvalSuite": lambda t: eval_pb2.UpdateEvalSuiteRequest(
        eval_suite=eval_pb2.EvalSuite(name=f"{t.parent}/evalSuites/basics")
    ),
    "EvalService/DeleteEvalSuite": lambda t: eval_pb2.DeleteEvalSuiteRequest(
        name=f"{t.parent}/evalSuites/basics"
    ),
    "EvalService/CreateEvalReport": lambda t: eval_pb2.CreateEvalReportRequest(
        parent=t.parent,
        report_id="r1",
        report=eval_pb2.EvalReport(suite=f"{t.parent}/evalSuites/basics"),
    ),
    "EvalService/GetEvalReport": lambda t: eval_pb2.GetEvalReportRequest(
        name=f"{t.parent}/evalReports/r1"
    ),
    "EvalService/ListEvalReports": lambda t: eval_pb2.ListEvalReportsRequest(parent=t.parent),
    # AuditService: tenant B's audit chain.
    "AuditService/ListAuditRecords": lambda t: audit_pb2.ListAuditRecordsRequest(parent=t.parent),
    "AuditService/VerifyAuditLog": lambda t: audit_pb2.VerifyAuditLogRequest(parent=t.parent),
}

# Streams a tenant-confined admin or executor may open, which carry only its own
# tenant's events.
STREAMS_OWN_TENANT = {"ApprovalService/WatchDecisions"}

# Calls that name no tenant: they succeed, and show nothing of another tenant.
FILTERED = {"TenantService/ListTenants", "ExecutorService/ListExecutors"}


def _all_methods() -> dict[str, Any]:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    methods = {}
    for service_name in PILOTHOUSE_SERVICES:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            methods[f"{service.name}/{method.name}"] = method
    return methods


def test_matrix_covers_every_rpc() -> None:
    assert set(CASES) == set(_all_methods())


def _callable(live: Live, method: str) -> Callable[..., Any]:
    service, rpc = method.split("/")
    descriptor = _all_methods()[method]
    request_cls = type(CASES[method](Target("x", "", "")))
    response_cls = _message_class(descriptor.output_type)
    if descriptor.client_streaming:
        bidi = live.channel.stream_stream(
            f"/pilothouse.v1.{service}/{rpc}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )

        async def exchange(request: Any, metadata: Any) -> Any:
            call = bidi(metadata=metadata, timeout=1.0)
            await call.write(request)
            return await call.read()

        return exchange
    if descriptor.server_streaming:
        stream = live.channel.unary_stream(
            f"/pilothouse.v1.{service}/{rpc}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )

        async def first(request: Any, metadata: Any) -> Any:
            async for item in stream(request, metadata=metadata, timeout=1.0):
                return item
            return None

        return first
    return live.channel.unary_unary(
        f"/pilothouse.v1.{service}/{rpc}",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )


def _message_class(descriptor: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


async def _tenant_b(live: Live) -> Target:
    tenant = await _registry_with_agent(live)
    prompt = (
        await live.prompts.GetPrompt(
            prompt_pb2.GetPromptRequest(name=f"tenants/{tenant}/prompts/support"),
            metadata=live.md(),
        )
    ).prompt
    key = await live.keys.CreateApiKey(
        api_key_pb2.CreateApiKeyRequest(
            api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT, tenant=f"tenants/{tenant}")
        ),
        metadata=live.md(),
    )
    # A decided approval in tenant B: no key of tenant A may see it in the decision feed.
    filed = await live.approvals.CreateApproval(
        approval_pb2.CreateApprovalRequest(
            parent=f"tenants/{tenant}",
            approval=approval_pb2.Approval(
                run=f"tenants/{tenant}/runs/00000000-0000-0000-0000-000000000001",
                agent=f"tenants/{tenant}/agents/helper",
                step=1,
                tool="echo",
            ),
        ),
        metadata=live.md(),
    )
    await live.approvals.DecideApproval(
        approval_pb2.DecideApprovalRequest(
            name=filed.approval.name, decision=approval_pb2.DECISION_APPROVE
        ),
        metadata=live.md(),
    )
    return Target(tenant, prompt.labels["production"], key.api_key.name)


@pytest.mark.parametrize(
    "role", [api_key_pb2.ROLE_OPERATOR, api_key_pb2.ROLE_ADMIN, api_key_pb2.ROLE_EXECUTOR]
)
async def test_key_of_tenant_a_cannot_touch_tenant_b(live: Live, role: int) -> None:
    tenant_a = await live.new_tenant("a")
    key_a = await live.new_key(role, tenant_a)
    b = await _tenant_b(live)
    before = await live.tools.GetTool(
        tool_pb2.GetToolRequest(name=f"{b.parent}/tools/echo"), metadata=live.md()
    )

    for method, build in CASES.items():
        call = _callable(live, method)
        if method in FILTERED:
            try:
                response = await call(build(b), metadata=live.md(key_a))
            except grpc.aio.AioRpcError as e:  # an executor may not even list
                assert e.code() == Code.PERMISSION_DENIED and role == api_key_pb2.ROLE_EXECUTOR
                continue
            if method == "TenantService/ListTenants":
                assert [t.name for t in response.tenants] == [f"tenants/{tenant_a}"]
            continue
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(build(b), metadata=live.md(key_a))
        if method in STREAMS_OWN_TENANT and role != api_key_pb2.ROLE_OPERATOR:
            # Allowed to watch, but only its own tenant: B's decision never arrives.
            assert info.value.code() == Code.DEADLINE_EXCEEDED, method
            continue
        assert info.value.code() == Code.PERMISSION_DENIED, (
            f"{method}: {info.value.code()} {info.value.details()}"
        )

    list_keys = live.keys.ListApiKeys(api_key_pb2.ListApiKeysRequest(), metadata=live.md(key_a))
    if role == api_key_pb2.ROLE_EXECUTOR:
        await h.fails(list_keys, Code.PERMISSION_DENIED)
    else:
        listed = await list_keys
        assert all(k.tenant == f"tenants/{tenant_a}" for k in listed.api_keys)
    after = await live.tools.GetTool(
        tool_pb2.GetToolRequest(name=f"{b.parent}/tools/echo"), metadata=live.md()
    )
    assert after == before
    await live.tenants.GetTenant(tenant_pb2.GetTenantRequest(name=b.parent), metadata=live.md())


async def test_operator_manages_its_own_tenant(live: Live) -> None:
    """The same calls, aimed at the key's own tenant, are allowed (where the role may)."""
    tenant = await _registry_with_agent(live)
    operator = await live.new_key(api_key_pb2.ROLE_OPERATOR, tenant)
    md = live.md(operator)
    parent = f"tenants/{tenant}"
    await live.tools.CreateTool(
        tool_pb2.CreateToolRequest(parent=parent, tool_id="mine", tool=h.tool()), metadata=md
    )
    listed = await live.tools.ListTools(tool_pb2.ListToolsRequest(parent=parent), metadata=md)
    assert {t.name for t in listed.tools} == {f"{parent}/tools/echo", f"{parent}/tools/mine"}
    client = await live.keys.CreateApiKey(
        api_key_pb2.CreateApiKeyRequest(api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_CLIENT)),
        metadata=md,
    )
    assert client.api_key.tenant == parent, "an operator's keys default to its tenant"
    await h.fails(
        live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(role=api_key_pb2.ROLE_ADMIN)
            ),
            metadata=md,
        ),
        Code.PERMISSION_DENIED,
    )
    await h.fails(
        live.tenants.UpdateQuotaPolicy(
            tenant_pb2.UpdateQuotaPolicyRequest(
                quota_policy=tenant_pb2.QuotaPolicy(name=f"{parent}/quotaPolicy", usd_per_day="1e6")
            ),
            metadata=md,
        ),
        Code.PERMISSION_DENIED,
    )
