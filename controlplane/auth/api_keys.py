"""Issuing, checking and revoking API keys."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane import audit
from controlplane.auth import keys
from controlplane.auth.cache import VerifiedKeys
from controlplane.auth.principal import ISSUABLE_ROLES, Permission, Principal, Role
from controlplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
    Unauthenticated,
)
from controlplane.registry.kinds import SCOPE_PATTERN
from controlplane.registry.names import tenant_name
from controlplane.registry.pagination import decode_token, page_size, paginate
from controlplane.store import api_keys as key_store
from controlplane.store import revision as revision_store
from controlplane.store import tenants as tenant_store
from controlplane.store.database import Database
from controlplane.store.errors import ReferenceViolation
from controlplane.store.rows import ApiKeyRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiKey:
    id: str
    display_name: str
    role: Role
    tenant: str | None
    create_time: datetime
    expire_time: datetime | None
    scopes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"apiKeys/{self.id}"


MAX_SCOPES = 32


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.id,
        row.display_name,
        Role(row.role),
        row.tenant,
        row.create_time,
        row.expire_time,
        row.scopes,
    )


class ApiKeys:
    def __init__(
        self,
        db: Database,
        *,
        cache_ttl: float = 5.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``cache_ttl``: seconds a verified key is trusted without reading the database
        again (see ``VerifiedKeys``); 0 reads it on every call. ``on_change`` hears of
        every committed change (executors receive the digests of tenant keys)."""
        self._db = db
        self._verified = VerifiedKeys(cache_ttl)
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    async def authenticate(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expire_time = cached
        else:
            material = keys.parse(token)
            if material is None:
                raise Unauthenticated("malformed API key: expected ph_{id}_{secret}")
            async with self._db.single_statement() as conn:
                row = await key_store.get(conn, material.id)
            if row is None or not keys.secret_matches(material.secret, row.secret_hash):
                raise Unauthenticated("invalid API key")
            principal = Principal(row.id, Role(row.role), row.tenant)
            expire_time = row.expire_time
            self._verified.put(token, principal, expire_time)
        if expire_time is not None and expire_time <= datetime.now(UTC):
            raise Unauthenticated(f"API key apiKeys/{principal.key_id} expired at {expire_time}")
        return principal

    async def create(
        self,
        caller: Principal,
        *,
        display_name: str,
        role: Role,
        tenant: str | None,
        expire_time: datetime | None,
        scopes: tuple[str, ...] = (),
    ) -> tuple[ApiKey, str]:
        """Issue a key; returns it and its token, which is never shown again."""
        caller.require(Permission.KEYS_MANAGE)
        if role not in ISSUABLE_ROLES[caller.role]:
            raise PermissionDenied(f"a {caller.role.value} key may not issue {role.value} keys")
        if tenant is None and caller.tenant is not None:
            tenant = caller.tenant
        if tenant is not None:
            caller.require_tenant(tenant)
        elif role not in (Role.ADMIN, Role.EXECUTOR):
            raise InvalidArgument.of(
                "api_key.tenant", f"is required for {role.value} keys (tenants/{{tenant}})"
            )
        if len(display_name) > 200:
            raise InvalidArgument.of("api_key.display_name", "must be at most 200 characters")
        if len(scopes) > MAX_SCOPES:
            raise InvalidArgument.of("api_key.scopes", f"may hold at most {MAX_SCOPES}")
        for i, scope in enumerate(scopes):
            if not SCOPE_PATTERN.match(scope):
                raise InvalidArgument.of(
                    f"api_key.scopes[{i}]", f"{scope[:100]!r} must look like 'orders:write'"
                )
        scopes = tuple(dict.fromkeys(scopes))
        now = datetime.now(UTC)
        if expire_time is not None and expire_time <= now:
            raise InvalidArgument.of("api_key.expire_time", "must be in the future")
        material = keys.generate()
        row = ApiKeyRow(
            material.id,
            tenant,
            role.value,
            display_name,
            keys.hash_secret(material.secret),
            now,
            expire_time,
            scopes,
        )
        async with self._db.transaction() as conn:
            if tenant is not None and await tenant_store.get(conn, tenant) is None:
                raise _missing_tenant(tenant)
            try:
                await key_store.insert(conn, row)
            except ReferenceViolation as e:
                raise _missing_tenant(tenant or "") from e
            await audit.record(
                conn,
                caller,
                "api_key.create",
                f"apiKeys/{material.id}",
                tenant=tenant,
                details={"role": role.value},
            )
            await revision_store.bump(conn)
        self._changed()
        return _key(row), material.token

    async def get(self, caller: Principal, key_id: str) -> ApiKey:
        caller.require(Permission.KEYS_MANAGE)
        async with self._db.single_statement() as conn:
            row = await key_store.get(conn, key_id)
        return self._visible(caller, row, key_id)

    async def list_keys(
        self, caller: Principal, *, size: int, token: str, tenant: str | None
    ) -> tuple[list[ApiKey], str]:
        caller.require(Permission.KEYS_MANAGE)
        if tenant is not None:
            caller.require_tenant(tenant)
        elif caller.tenant is not None:
            tenant = caller.tenant
        collection = f"apiKeys?tenant={tenant or ''}"
        limit = page_size(size)
        after = decode_token(token, collection)
        async with self._db.snapshot() as conn:
            rows = await key_store.list_page(conn, after=after, limit=limit + 1, tenant=tenant)
        page, next_token = paginate(rows, limit, collection, lambda r: r.id)
        return [_key(r) for r in page], next_token

    async def delete(self, caller: Principal, key_id: str) -> None:
        caller.require(Permission.KEYS_MANAGE)
        async with self._db.transaction() as conn:
            key = self._visible(caller, await key_store.get(conn, key_id), key_id)
            if key.role not in ISSUABLE_ROLES[caller.role]:
                raise PermissionDenied(
                    f"a {caller.role.value} key may not revoke {key.role.value} keys"
                )
            await key_store.delete(conn, key_id)
            await audit.record(conn, caller, "api_key.delete", key.name, tenant=key.tenant)
            await revision_store.bump(conn)
        self._verified.forget_key(key_id)
        self._changed()

    async def ensure_bootstrap_admin(self, token: str | None) -> str | None:
        """Make sure an admin key exists. With ``token`` (PILOTHOUSE_BOOTSTRAP_KEY) that key
        is registered once: never again after it has been revoked, however often the
        control plane restarts with the variable still set. Without it, a key is generated
        when no admin key exists. Returns a newly generated token, to be shown once, or
        None."""
        given = None if token is None else keys.parse(token)
        if token is not None and given is None:
            raise ValueError(
                "PILOTHOUSE_BOOTSTRAP_KEY must look like ph_{12 base32 chars}_{43 base64url "
                "chars}; `controlplane keygen` prints one"
            )
        async with self._db.transaction() as conn:
            if given is None:
                if await key_store.count_with_role(conn, Role.ADMIN.value) > 0:
                    return None
                material = keys.generate()
            elif await key_store.bootstrap_registered(conn, given.id):
                if await key_store.get(conn, given.id) is None:
                    log.warning(
                        "PILOTHOUSE_BOOTSTRAP_KEY names apiKeys/%s, which was revoked: it stays "
                        "revoked (unset the variable, or set a new key from "
                        "`controlplane keygen`)",
                        given.id,
                    )
                return None
            elif await key_store.get(conn, given.id) is not None:
                # Registered before bootstrap keys were recorded: record it now.
                await key_store.record_bootstrap(conn, given.id, datetime.now(UTC))
                return None
            else:
                material = given
            now = datetime.now(UTC)
            await key_store.insert(
                conn,
                ApiKeyRow(
                    material.id,
                    None,
                    Role.ADMIN.value,
                    "bootstrap admin",
                    keys.hash_secret(material.secret),
                    now,
                    None,
                ),
            )
            if given is not None:
                await key_store.record_bootstrap(conn, material.id, now)
            await audit.record(
                conn, None, "api_key.bootstrap", f"apiKeys/{material.id}", tenant=None
            )
        return None if given is not None else material.token

    @staticmethod
    def _visible(caller: Principal, row: ApiKeyRow | None, key_id: str) -> ApiKey:
        if row is None:
            raise NotFound("api key", f"apiKeys/{key_id}")
        if row.tenant is None:
            if caller.tenant is not None:
                raise PermissionDenied("this key may only see keys of its own tenant")
        else:
            caller.require_tenant(row.tenant)
        return _key(row)


def _missing_tenant(tenant: str) -> FailedPrecondition:
    name = tenant_name(tenant)
    return FailedPrecondition(
        f"api_key.tenant: tenant {name!r} does not exist",
        [PreconditionViolation("MISSING_REFERENCE", name, "the key's tenant does not exist")],
    )
