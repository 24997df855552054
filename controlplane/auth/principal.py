"""Principals, roles and permissions."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controlplane.errors import PermissionDenied


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    EXECUTOR = "executor"
    CLIENT = "client"


class Permission(StrEnum):
    REGISTRY_READ = "registry.read"
    """Read tools, models, routes, prompts, agents."""
    REGISTRY_WRITE = "registry.write"
    TENANT_READ = "tenants.read"
    """Read a tenant and its quota policy."""
    TENANT_ADMIN = "tenants.admin"
    """Create, change and delete tenants; set quota policies."""
    KEYS_MANAGE = "keys.manage"
    """Issue and revoke API keys (operators: of their own tenant, roles up to operator)."""
    CONFIG_WATCH = "config.watch"
    """Receive configuration over xDS (a key confined to a tenant sees only that tenant)."""
    EXECUTORS_READ = "executors.read"
    """See which executors are connected and what they acknowledged."""
    APPROVALS_FILE = "approvals.file"
    """File approval requests and watch decisions (executors)."""
    APPROVALS_READ = "approvals.read"
    APPROVALS_DECIDE = "approvals.decide"
    TELEMETRY_REPORT = "telemetry.report"
    """Deliver runs' telemetry (executors)."""
    USAGE_READ = "usage.read"
    """Read the usage ledger and the run index."""
    QUOTA_LEASE = "quota.lease"
    """Lease slices of tenants' limits (executors)."""
    AUDIT_READ = "audit.read"
    """List and verify the audit log."""
    FEEDBACK_WRITE = "feedback.write"
    """Record what people thought of runs (clients)."""


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {
            Permission.REGISTRY_READ,
            Permission.REGISTRY_WRITE,
            Permission.TENANT_READ,
            Permission.KEYS_MANAGE,
            Permission.EXECUTORS_READ,
            Permission.APPROVALS_READ,
            Permission.APPROVALS_DECIDE,
            Permission.USAGE_READ,
            Permission.AUDIT_READ,
            Permission.FEEDBACK_WRITE,
        }
    ),
    Role.EXECUTOR: frozenset(
        {
            Permission.REGISTRY_READ,
            Permission.TENANT_READ,
            Permission.CONFIG_WATCH,
            Permission.APPROVALS_FILE,
            Permission.TELEMETRY_REPORT,
            Permission.QUOTA_LEASE,
        }
    ),
    Role.CLIENT: frozenset({Permission.FEEDBACK_WRITE}),
}

# Which roles a key of each role may issue.
ISSUABLE_ROLES: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset(Role),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.CLIENT}),
    Role.EXECUTOR: frozenset(),
    Role.CLIENT: frozenset(),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    key_id: str
    role: Role
    tenant: str | None
    """The one tenant the key may act in; None means every tenant."""

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"apiKeys/{self.key_id}"

    def has(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    def require(self, permission: Permission) -> None:
        if not self.has(permission):
            raise PermissionDenied(f"role {self.role.value!r} lacks permission {permission.value}")

    def can_access(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant

    def require_tenant(self, tenant: str) -> None:
        if not self.can_access(tenant):
            raise PermissionDenied(
                f"this key is confined to tenant {self.tenant!r} and may not act in {tenant!r}"
            )
