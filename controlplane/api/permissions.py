"""The permission each RPC needs. A method missing here is refused (fail closed); a test
checks that every method of the contract has an entry."""

from __future__ import annotations

from controlplane.auth.principal import Permission

PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def _service(name: str, methods: dict[str, Permission]) -> dict[str, Permission]:
    return {f"/pilothouse.v1.{name}/{method}": p for method, p in methods.items()}


def _registry(name: str, reads: list[str], writes: list[str]) -> dict[str, Permission]:
    return _service(
        name,
        {m: Permission.REGISTRY_READ for m in reads}
        | {m: Permission.REGISTRY_WRITE for m in writes},
    )


def _crud(resource: str, plural: str) -> tuple[list[str], list[str]]:
    return (
        [f"Get{resource}", f"List{plural}"],
        [f"Create{resource}", f"Update{resource}", f"Delete{resource}"],
    )


METHOD_PERMISSIONS: dict[str, Permission] = {
    **_registry("ToolService", *_crud("Tool", "Tools")),
    **_registry(
        "ModelService",
        *(
            a + b
            for a, b in zip(
                _crud("Model", "Models"), _crud("ModelRoute", "ModelRoutes"), strict=True
            )
        ),
    ),
    **_registry(
        "PromptService",
        _crud("Prompt", "Prompts")[0] + ["GetPromptVersion", "ListPromptVersions"],
        _crud("Prompt", "Prompts")[1] + ["CreatePromptVersion", "SetPromptLabel"],
    ),
    **_registry("AgentRegistryService", *_crud("Agent", "Agents")),
    **_service(
        "TenantService",
        {
            "GetTenant": Permission.TENANT_READ,
            "ListTenants": Permission.TENANT_READ,
            "GetQuotaPolicy": Permission.TENANT_READ,
            "CreateTenant": Permission.TENANT_ADMIN,
            "UpdateTenant": Permission.TENANT_ADMIN,
            "DeleteTenant": Permission.TENANT_ADMIN,
            "UpdateQuotaPolicy": Permission.TENANT_ADMIN,
        },
    ),
    **_service("ExecutorService", {"ListExecutors": Permission.EXECUTORS_READ}),
    **_service(
        "ApprovalService",
        {
            "CreateApproval": Permission.APPROVALS_FILE,
            "WatchDecisions": Permission.APPROVALS_FILE,
            "GetApproval": Permission.APPROVALS_READ,
            "ListApprovals": Permission.APPROVALS_READ,
            "DecideApproval": Permission.APPROVALS_DECIDE,
        },
    ),
    # State of the World only: the delta variant answers UNIMPLEMENTED to those allowed.
    **{
        f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}": (
            Permission.CONFIG_WATCH
        )
        for method in ("StreamAggregatedResources", "DeltaAggregatedResources")
    },
    **_service(
        "TelemetryService",
        {
            "StreamEvents": Permission.TELEMETRY_REPORT,
            "QueryUsage": Permission.USAGE_READ,
            "GetRunSummary": Permission.USAGE_READ,
            "ListRunSummaries": Permission.USAGE_READ,
        },
    ),
    **_registry(
        "RolloutService",
        ["GetRollout", "ListRollouts", "WatchRollout"],
        ["CreateRollout", "PauseRollout", "ResumeRollout", "PromoteRollout", "AbortRollout"],
    ),
    **_registry(
        "EvalService",
        _crud("EvalSuite", "EvalSuites")[0] + ["GetEvalReport", "ListEvalReports"],
        _crud("EvalSuite", "EvalSuites")[1] + ["CreateEvalReport"],
    ),
    **_service(
        "FeedbackService",
        {"RecordFeedback": Permission.FEEDBACK_WRITE, "ListFeedback": Permission.USAGE_READ},
    ),
    **_service(
        "AuditService",
        {"ListAuditRecords": Permission.AUDIT_READ, "VerifyAuditLog": Permission.AUDIT_READ},
    ),
    **_service(
        "QuotaService",
        {
            "AcquireLease": Permission.QUOTA_LEASE,
            "ReleaseLease": Permission.QUOTA_LEASE,
            "GetBalance": Permission.TENANT_READ,
        },
    ),
    **_service(
        "ApiKeyService",
        {
            m: Permission.KEYS_MANAGE
            for m in ("CreateApiKey", "GetApiKey", "ListApiKeys", "DeleteApiKey")
        },
    ),
}
