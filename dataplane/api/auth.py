"""Checking a caller's API key on the executor itself, against the key digests the
control plane sends over xDS: no call to the control plane on any request."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from dataplane.config.watcher import ConfigWatcher
from pilothouse.v1 import api_key_pb2, discovery_pb2

_KEY = re.compile(r"^ph_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")
# Roles that may run agents and read runs; executors and unconfined keys may not.
RUNNER_ROLES = frozenset(
    {api_key_pb2.ROLE_CLIENT, api_key_pb2.ROLE_OPERATOR, api_key_pb2.ROLE_ADMIN}
)


class Unauthenticated(Exception):
    pass


class PermissionDenied(Exception):
    def __init__(self, message: str, *, key: str = "", tenant: str = "") -> None:
        """``key`` asked to act in ``tenant`` (when known): the refusal is audited there."""
        super().__init__(message)
        self.key = key
        self.tenant = tenant


@dataclass(frozen=True)
class Caller:
    key: str
    """apiKeys/{id}"""
    tenant: str
    """The tenant the key is confined to."""
    scopes: tuple[str, ...] = ()


def authenticate(watcher: ConfigWatcher, authorization: str | None) -> Caller:
    if not authorization:
        raise Unauthenticated("missing 'authorization: Bearer <API key>' metadata")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("authorization must be 'Bearer <API key>'")
    match = _KEY.match(token.strip())
    if match is None:
        raise Unauthenticated("malformed API key: expected ph_{id}_{secret}")
    config = watcher.current
    digest = config.get(discovery_pb2.ApiKeyDigest, f"apiKeys/{match[1]}") if config else None
    if digest is None or not hmac.compare_digest(
        hashlib.sha256(match[2].encode()).hexdigest(), digest.secret_sha256
    ):
        raise Unauthenticated("invalid API key (or not one confined to a tenant)")
    if digest.HasField("expire_time") and digest.expire_time.ToDatetime(tzinfo=UTC) <= datetime.now(
        UTC
    ):
        raise Unauthenticated(f"API key {digest.name} has expired")
    if digest.role not in RUNNER_ROLES:
        raise PermissionDenied(f"role {api_key_pb2.Role.Name(digest.role)} may not run agents")
    return Caller(digest.name, digest.tenant.removeprefix("tenants/"), tuple(digest.scopes))


def require_tenant(caller: Caller, tenant: str) -> None:
    if caller.tenant != tenant:
        raise PermissionDenied(
            f"this key is confined to tenant {caller.tenant!r} and may not act in {tenant!r}",
            key=caller.key,
            tenant=tenant,
        )
