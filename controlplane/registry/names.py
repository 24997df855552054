"""Resource names (AIP-122): parsing and validation.

Every registry resource lives under a tenant: ``tenants/{tenant}/{collection}/{id}``.
Ids are lower case letters, digits and hyphens, start with a letter, end with a letter or
digit, and are at most 63 characters long (RFC 1034 labels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controlplane.errors import InvalidArgument

ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
ID_RULE = (
    "must be 1-63 lower case letters, digits or hyphens, "
    "start with a letter and not end with a hyphen"
)


def check_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument.of(field, "is required")
    if not ID_PATTERN.match(value):
        raise InvalidArgument.of(field, f"{value!r} {ID_RULE}")
    return value


def tenant_name(tenant: str) -> str:
    return f"tenants/{tenant}"


def parse_tenant(name: str, field: str) -> str:
    """``tenants/{tenant}`` → tenant id."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "tenants":
        raise InvalidArgument.of(field, f"{name!r} is not a tenant name (tenants/{{tenant}})")
    return check_id(parts[1], field)


@dataclass(frozen=True)
class ChildName:
    """A resource directly under a tenant."""

    tenant: str
    id: str


def child_name(tenant: str, collection: str, id_: str) -> str:
    return f"tenants/{tenant}/{collection}/{id_}"


def parse_child(name: str, collection: str, field: str) -> ChildName:
    """``tenants/{tenant}/{collection}/{id}`` → its parts."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != collection:
        raise InvalidArgument.of(
            field, f"{name!r} is not a valid name (tenants/{{tenant}}/{collection}/{{id}})"
        )
    return ChildName(check_id(parts[1], field), check_id(parts[3], field))


@dataclass(frozen=True)
class VersionName:
    tenant: str
    prompt: str
    version: str


VERSION_ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")


def version_name(tenant: str, prompt: str, version: str) -> str:
    return f"tenants/{tenant}/prompts/{prompt}/versions/{version}"


def parse_version(name: str, field: str) -> VersionName:
    """``tenants/{tenant}/prompts/{prompt}/versions/{version}`` → its parts."""
    parts = name.split("/")
    if (
        len(parts) != 6
        or parts[0] != "tenants"
        or parts[2] != "prompts"
        or parts[4] != "versions"
        or not VERSION_ID_PATTERN.match(parts[5])
    ):
        raise InvalidArgument.of(
            field,
            f"{name!r} is not a prompt version name "
            "(tenants/{tenant}/prompts/{prompt}/versions/{16 hex digits})",
        )
    return VersionName(check_id(parts[1], field), check_id(parts[3], field), parts[5])


def tenant_of(name: str) -> str | None:
    """The tenant a resource name lies under, or None when it names no tenant."""
    parts = name.split("/")
    if len(parts) >= 2 and parts[0] == "tenants" and parts[1]:
        return parts[1]
    return None


def parse_run(name: str, field: str) -> tuple[str, str]:
    """``tenants/{tenant}/runs/{run}`` → tenant, run id."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "runs" or not parts[3]:
        raise InvalidArgument.of(field, f"{name!r} is not tenants/{{tenant}}/runs/{{run}}")
    if len(parts[3]) > 36:
        raise InvalidArgument.of(field, "the run id is at most 36 characters")
    return check_id(parts[1], field), parts[3]
