"""Rows as the store hands them to the domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ResourceRow:
    tenant: str
    kind: str
    id: str
    spec: str
    """The spec as canonical JSON text."""
    etag: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class Ref:
    """``field`` of the referencing resource names resource ``to_kind``/``to_id``."""

    field: str
    to_kind: str
    to_id: str


@dataclass(frozen=True)
class Referrer:
    kind: str
    id: str
    field: str


@dataclass(frozen=True)
class ApiKeyRow:
    id: str
    tenant: str | None
    role: str
    display_name: str
    secret_hash: str
    create_time: datetime
    expire_time: datetime | None
    scopes: tuple[str, ...] = ()
