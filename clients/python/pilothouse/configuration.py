"""How executors' configuration is addressed and versioned over xDS: the same on both
servers, so that an executor's version of what it holds and the control plane's version
of what it serves are equal exactly when they hold the same.

Configuration travels as one resource per tenant (``pilothouse.v1.TenantConfiguration``,
named ``tenants/{tenant}``, versioned by its content) over Delta xDS. The version of a
whole configuration is a digest of its tenants' versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

TYPE_PREFIX = "type.googleapis.com/pilothouse.v1."
TENANT_CONFIGURATION_URL = TYPE_PREFIX + "TenantConfiguration"
"""The one resource type executors watch."""

MAX_TENANT_CONFIG_BYTES = 4 * 1024 * 1024
"""A tenant's registry content, as canonical JSON, that the control plane will deliver;
a larger configuration is held back (its previous one stays in force)."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest discovery response the control plane sends and an executor receives:
room for the largest tenant configuration (its protobuf is at most a small multiple of
its JSON) and the response around it."""


def resource_name(tenant: str) -> str:
    return f"tenants/{tenant}"


def tenant_of(resource: str) -> str | None:
    """The tenant a TenantConfiguration's name names, or None when it names none."""
    prefix, _, tenant = resource.partition("/")
    return tenant if prefix == "tenants" and tenant and "/" not in tenant else None


def combined_version(versions: Mapping[str, str]) -> str:
    """The version of a configuration made of these tenants' (tenant id → version)."""
    text = "|".join(f"{tenant}={versions[tenant]}" for tenant in sorted(versions))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
