"""The registry's operations: create, read, update and delete any kind, by one set of
rules; prompt versions and labels; tenants and their quota policies.

Every operation runs in one transaction, is scoped to one tenant, and records what it
changed in the audit log. The caller's role has been checked at the API's edge; the
caller's tenant is checked here again so no path reaches another tenant's rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane import audit
from controlplane.auth.principal import Permission, Principal
from controlplane.errors import (
    AlreadyExists,
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from controlplane.lru import LruCache
from controlplane.registry import codec, kinds, names
from controlplane.registry import resources as r
from controlplane.registry.checks import Violations
from controlplane.registry.kinds import Kind, Reference
from controlplane.registry.masks import apply_mask
from controlplane.registry.pagination import decode_token, page_size, paginate
from controlplane.store import api_keys as key_store
from controlplane.store import resources as resource_store
from controlplane.store import revision as revision_store
from controlplane.store import tenants as tenant_store
from controlplane.store.database import Database
from controlplane.store.errors import DuplicateKey, ReferenceViolation
from controlplane.store.rows import Ref, ResourceRow

S = TypeVar("S")

QUOTA_POLICY_ID = "quotaPolicy"


def etag_of(spec: Any) -> str:
    return codec.content_hash(spec)[:16]


@dataclass(frozen=True)
class RegistryContents:
    """Everything the registry holds, read in one consistent transaction."""

    revision: int
    tenants: tuple[r.Record[r.Tenant], ...]
    resources: Mapping[str, tuple[r.Record[Any], ...]]
    """Kind name → every record of that kind, all tenants, QuotaPolicy and the digests of
    tenant-confined API keys included."""


class SpecCache:
    """Decoded specs by their stored text: a page of a thousand resources is decoded
    once, then served from memory while unchanged. Specs are shared between callers
    and must never be mutated (every change builds a new one)."""

    def __init__(self, max_entries: int = 20_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        # Keyed by a digest of the stored text, weighed by its size (the decoded spec
        # weighs about as much): a tenant's large resources, updated again and again,
        # cannot make the cache hold more than max_bytes.
        self._specs: LruCache[tuple[str, bytes], tuple[int, Any]] = LruCache(
            max_entries, max_bytes=max_bytes, size=lambda entry: entry[0]
        )

    def record(self, kind: Kind[S], row: ResourceRow) -> r.Record[S]:
        _, spec = self._specs.get_or_make(
            (kind.name, hashlib.sha256(row.spec.encode()).digest()),
            lambda: (2 * len(row.spec), codec.decode(kind.spec_type, json.loads(row.spec))),
        )
        return r.Record(row.tenant, row.id, spec, row.etag, row.create_time, row.update_time)


def resource_name(kind: Kind[Any], tenant: str, id_: str) -> str:
    if kind is kinds.PROMPT_VERSION:
        prompt, version = id_.split("/")
        return names.version_name(tenant, prompt, version)
    if kind is kinds.TENANT:
        return names.tenant_name(tenant)
    if kind is kinds.QUOTA_POLICY:
        return f"tenants/{tenant}/{QUOTA_POLICY_ID}"
    return names.child_name(tenant, kind.collection, id_)


def _parse_ref(kind: Kind[Any], name: str, field: str) -> tuple[str, str]:
    """A reference's (tenant, stored id)."""
    if kind is kinds.PROMPT_VERSION:
        v = names.parse_version(name, field)
        return v.tenant, f"{v.prompt}/{v.version}"
    child = names.parse_child(name, kind.collection, field)
    return child.tenant, child.id


class Registry:
    def __init__(self, db: Database, *, on_change: Callable[[], None] | None = None) -> None:
        """``on_change`` is called after every committed change to the registry (the
        discovery publisher uses it to rebuild executors' configuration at once)."""
        self._db = db
        self._record = SpecCache().record
        self._on_change = on_change

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; after it commits, ``on_change`` hears of it."""
        async with self._db.transaction() as conn:
            yield conn
        if self._on_change is not None:
            self._on_change()

    @staticmethod
    async def _changed(
        conn: AsyncConnection,
        caller: Principal | None,
        action: str,
        resource: str,
        *,
        tenant: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record a change: an audit event, and a new registry revision."""
        await audit.record(conn, caller, action, resource, tenant=tenant, details=details)
        await revision_store.bump(conn)

    # -- any tenant-scoped kind -------------------------------------------------------

    async def get(self, caller: Principal | None, kind: Kind[S], name: str) -> r.Record[S]:
        """``caller`` None is the control plane itself."""
        tenant, id_ = (
            self._parse(caller, kind, name, "name") if caller else _parse_ref(kind, name, "name")
        )
        async with self._db.single_statement() as conn:
            row = await resource_store.get(conn, tenant, kind.name, id_)
        if row is None:
            raise NotFound(kind.name, name)
        return self._record(kind, row)

    async def list_resources(
        self, caller: Principal, kind: Kind[S], parent: str, size: int, token: str
    ) -> tuple[list[r.Record[S]], str]:
        tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        return await self._list(kind, tenant, parent, size, token)

    async def _list(
        self, kind: Kind[S], tenant: str, parent: str, size: int, token: str, prefix: str = ""
    ) -> tuple[list[r.Record[S]], str]:
        collection = f"{parent}/{kind.collection}"
        limit = page_size(size)
        after = decode_token(token, collection)
        async with self._db.snapshot() as conn:
            rows = await resource_store.list_page(
                conn, tenant, kind.name, after=after, limit=limit + 1, prefix=prefix
            )
            # Rows prove the tenant exists; only an empty page needs to ask.
            if not rows and await tenant_store.get(conn, tenant) is None:
                raise NotFound("Tenant", names.tenant_name(tenant))
        page, next_token = paginate(rows, limit, collection, lambda row: row.id)
        return [self._record(kind, row) for row in page], next_token

    async def create(
        self, caller: Principal, kind: Kind[S], parent: str, id_: str, spec: S
    ) -> r.Record[S]:
        tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        names.check_id(id_, f"{kind.request_field}_id")
        spec = _clear_output_only(kind, spec)
        if kind.initial is not None:
            spec = kind.initial(spec)
        _check(kind, spec)
        now = datetime.now(UTC)
        name = resource_name(kind, tenant, id_)
        row = ResourceRow(tenant, kind.name, id_, _dumps(spec), etag_of(spec), now, now)
        async with self._write() as conn:
            if await tenant_store.get(conn, tenant) is None:
                raise NotFound("Tenant", parent)
            if await resource_store.get(conn, tenant, kind.name, id_) is not None:
                raise AlreadyExists(kind.name, name)
            refs = await self._resolve(conn, kind, tenant, spec)
            await self._refuse_if_claimed(conn, kind, tenant, spec)
            try:
                await resource_store.insert(conn, row, refs)
            except DuplicateKey as e:
                raise AlreadyExists(kind.name, name) from e
            except ReferenceViolation as e:
                raise _changed_underneath(name) from e
            await self._changed(conn, caller, f"{kind.name}.create", name, tenant=tenant)
        return self._record(kind, row)

    async def update(
        self,
        caller: Principal,
        kind: Kind[S],
        name: str,
        incoming: S,
        mask: Sequence[str],
        etag: str,
    ) -> r.Record[S]:
        tenant, id_ = self._parse(caller, kind, name, f"{kind.request_field}.name")
        async with self._write() as conn:
            existing = await self._existing(conn, kind, tenant, id_, name, etag)
            spec = _revised(kind, existing, incoming, mask, etag, name)
            if spec is None:
                return existing
            new_etag = etag_of(spec)
            refs = await self._resolve(conn, kind, tenant, spec)
            row = ResourceRow(
                tenant,
                kind.name,
                id_,
                _dumps(spec),
                new_etag,
                existing.create_time,
                datetime.now(UTC),
            )
            try:
                updated = await resource_store.update(conn, row, existing.etag, refs)
            except ReferenceViolation as e:
                raise _changed_underneath(name) from e
            if not updated:
                raise EtagMismatch(name)
            await self._changed(
                conn,
                caller,
                f"{kind.name}.update",
                name,
                tenant=tenant,
                details={"fields": _changed_fields(existing.spec, spec)},
            )
        return self._record(kind, row)

    async def modify(
        self,
        caller: Principal | None,
        kind: Kind[S],
        name: str,
        change: Callable[[r.Record[S]], Modification[S] | None],
        *,
        etag: str = "",
    ) -> r.Record[S]:
        """Read, change and write one resource in one transaction: ``change`` gets the
        stored record and says what it becomes (None: nothing changes). For changes the
        system makes to output-only fields, such as a rollout's progress; ``caller``
        None is the control plane itself. A label move it asks for happens in the same
        transaction."""
        tenant, id_ = (
            self._parse(caller, kind, name, "name") if caller else _parse_ref(kind, name, "name")
        )
        async with self._write() as conn:
            existing = await self._existing(conn, kind, tenant, id_, name, etag)
            modification = change(existing)
            if modification is None:
                return existing
            spec = modification.spec
            row = ResourceRow(
                tenant,
                kind.name,
                id_,
                _dumps(spec),
                etag_of(spec),
                existing.create_time,
                datetime.now(UTC),
            )
            refs = await self._resolve(conn, kind, tenant, spec)
            if not await resource_store.update(conn, row, existing.etag, refs):
                raise EtagMismatch(name)
            await self._changed(
                conn, caller, modification.action, name, tenant=tenant, details=modification.details
            )
            if modification.move_label is not None:
                await self._move_label(conn, caller, *modification.move_label, etag="")
        return self._record(kind, row)

    async def delete(self, caller: Principal, kind: Kind[Any], name: str, etag: str) -> None:
        tenant, id_ = self._parse(caller, kind, name, "name")
        async with self._write() as conn:
            await self._existing(conn, kind, tenant, id_, name, etag)
            await self._refuse_if_used(conn, kind, tenant, [id_])
            if kind.child_kind:
                child_kind = kinds.TENANT_SCOPED[kind.child_kind]
                prefix = f"{id_}/"
                children = await resource_store.list_all(conn, tenant, child_kind.name, prefix)
                await self._refuse_if_used(conn, child_kind, tenant, [c.id for c in children])
                await resource_store.delete_prefix(conn, tenant, child_kind.name, prefix)
            try:
                await resource_store.delete(conn, tenant, kind.name, id_)
            except ReferenceViolation as e:
                raise _changed_underneath(name) from e
            await self._changed(conn, caller, f"{kind.name}.delete", name, tenant=tenant)

    async def everywhere(self, kind: Kind[S]) -> list[r.Record[S]]:
        """Every resource of ``kind`` in every tenant: for the control plane's own loops,
        never for a caller."""
        async with self._db.snapshot() as conn:
            rows = await resource_store.list_everything(conn, kind.name)
        return [self._record(kind, row) for row in rows]

    async def revision(self) -> int:
        """The registry's revision: it grows with every change."""
        async with self._db.single_statement() as conn:
            return await revision_store.current(conn)

    async def export(self) -> RegistryContents:
        """Everything, from one consistent read, for building executors' configuration."""
        async with self._db.snapshot() as conn:
            revision = await revision_store.current(conn)
            tenant_rows = await tenant_store.list_page(conn, after="", limit=1_000_000)
            rows = await resource_store.list_everything(conn)
            key_rows = await key_store.list_page(conn, after="", limit=10_000_000, tenant=None)
        grouped: dict[str, list[r.Record[Any]]] = defaultdict(list)
        for row in rows:
            kind = kinds.TENANT_SCOPED.get(row.kind) or kinds.QUOTA_POLICY
            grouped[row.kind].append(self._record(kind, row))
        for key in key_rows:
            if key.tenant is None:
                continue  # unconfined keys (admins, executors) never run agents
            digest = r.ApiKeyDigest(key.role, key.secret_hash, key.expire_time, key.scopes)
            grouped["ApiKeyDigest"].append(
                r.Record(
                    key.tenant, key.id, digest, etag_of(digest), key.create_time, key.create_time
                )
            )
        return RegistryContents(
            revision,
            tuple(self._record(kinds.TENANT, row) for row in tenant_rows),
            {kind: tuple(records) for kind, records in grouped.items()},
        )

    # -- prompt versions and labels ---------------------------------------------------

    async def create_prompt_version(
        self, caller: Principal, parent: str, spec: r.PromptVersion
    ) -> tuple[r.Record[r.PromptVersion], bool]:
        """The version with this content, created if new; True when this call created it."""
        prompt = names.parse_child(parent, "prompts", "parent")
        caller.require_tenant(prompt.tenant)
        kind = kinds.PROMPT_VERSION
        _check(kind, spec)
        digest = codec.content_hash(spec)
        id_ = f"{prompt.id}/{digest[:16]}"
        now = datetime.now(UTC)
        row = ResourceRow(prompt.tenant, kind.name, id_, _dumps(spec), digest[:16], now, now)
        async with self._write() as conn:
            if await resource_store.get(conn, prompt.tenant, "Prompt", prompt.id) is None:
                raise NotFound("Prompt", parent)
            existing = await resource_store.get(conn, prompt.tenant, kind.name, id_)
            if existing is not None:
                return self._record(kind, existing), False
            refs = await self._resolve(conn, kind, prompt.tenant, spec)
            try:
                await resource_store.insert(conn, row, refs)
            except ReferenceViolation as e:
                raise _changed_underneath(parent) from e
            name = resource_name(kind, prompt.tenant, id_)
            await self._changed(
                conn,
                caller,
                "PromptVersion.create",
                name,
                tenant=prompt.tenant,
                details={"content_hash": digest},
            )
        return self._record(kind, row), True

    async def list_prompt_versions(
        self, caller: Principal, parent: str, size: int, token: str
    ) -> tuple[list[r.Record[r.PromptVersion]], str]:
        prompt = names.parse_child(parent, "prompts", "parent")
        caller.require_tenant(prompt.tenant)
        async with self._db.snapshot() as conn:
            if await resource_store.get(conn, prompt.tenant, "Prompt", prompt.id) is None:
                raise NotFound("Prompt", parent)
        return await self._list(
            kinds.PROMPT_VERSION, prompt.tenant, parent, size, token, prefix=f"{prompt.id}/"
        )

    async def set_prompt_label(
        self, caller: Principal, name: str, label: str, version: str, etag: str
    ) -> tuple[r.Record[r.Prompt], str]:
        """Point ``label`` at ``version``; returns the prompt and the label's previous
        version ("" if the label is new)."""
        prompt = names.parse_child(name, "prompts", "name")
        caller.require_tenant(prompt.tenant)
        v = Violations()
        v.id("label", label)
        v.raise_if_any()
        target = names.parse_version(version, "version")
        if (target.tenant, target.prompt) != (prompt.tenant, prompt.id):
            raise InvalidArgument.of("version", f"{version!r} is not a version of {name!r}")
        async with self._write() as conn:
            await self._existing(conn, kinds.PROMPT, prompt.tenant, prompt.id, name, etag)
            if label == kinds.DEFAULT_PROMPT_LABEL:
                for rollout in await self._live(conn, kinds.ROLLOUT, prompt.tenant, name):
                    raise FailedPrecondition(
                        f"{name} has a rollout in progress; promote or abort "
                        f"{resource_name(kinds.ROLLOUT, prompt.tenant, rollout.id)} to move "
                        f"its {label} label",
                        [
                            PreconditionViolation(
                                "ROLLOUT_IN_PROGRESS",
                                resource_name(kinds.ROLLOUT, prompt.tenant, rollout.id),
                                "the rollout decides where production points",
                            )
                        ],
                    )
            return await self._move_label(conn, caller, name, label, version, etag=etag)

    async def _move_label(
        self,
        conn: AsyncConnection,
        caller: Principal | None,
        name: str,
        label: str,
        version: str,
        *,
        etag: str,
    ) -> tuple[r.Record[r.Prompt], str]:
        prompt = names.parse_child(name, "prompts", "name")
        target = names.parse_version(version, "version")
        kind = kinds.PROMPT
        existing = await self._existing(conn, kind, prompt.tenant, prompt.id, name, etag)
        version_id = f"{prompt.id}/{target.version}"
        if await resource_store.get(conn, prompt.tenant, "PromptVersion", version_id) is None:
            raise NotFound("PromptVersion", version)
        previous = existing.spec.labels.get(label, "")
        if previous == version:
            return existing, previous
        spec = dataclasses.replace(existing.spec, labels={**existing.spec.labels, label: version})
        row = ResourceRow(
            prompt.tenant,
            kind.name,
            prompt.id,
            _dumps(spec),
            etag_of(spec),
            existing.create_time,
            datetime.now(UTC),
        )
        if not await resource_store.update(conn, row, existing.etag, []):
            raise EtagMismatch(name)
        await self._changed(
            conn,
            caller,
            "Prompt.label.move",
            name,
            tenant=prompt.tenant,
            details={"label": label, "from": previous, "to": version},
        )
        return self._record(kind, row), previous

    async def _live(
        self, conn: AsyncConnection, kind: Kind[S], tenant: str, claimed: str
    ) -> list[r.Record[S]]:
        """The resources of ``kind`` (an exclusive kind) that claim ``claimed`` now."""
        assert kind.exclusive is not None
        records = [
            self._record(kind, row)
            for row in await resource_store.list_all(conn, tenant, kind.name)
        ]
        return [rec for rec in records if kind.exclusive(rec.spec) == claimed]

    async def _refuse_if_claimed(
        self, conn: AsyncConnection, kind: Kind[S], tenant: str, spec: S
    ) -> None:
        """For an exclusive kind: lock what ``spec`` claims, and refuse if a live
        resource of the kind claims it already."""
        if kind.exclusive is None or (claimed := kind.exclusive(spec)) is None:
            return
        target = names.parse_child(claimed, "prompts", f"{kind.request_field}.prompt")
        await resource_store.get(conn, tenant, "Prompt", target.id, for_update=True)
        others = await self._live(conn, kind, tenant, claimed)
        if others:
            other = resource_name(kind, tenant, others[0].id)
            raise FailedPrecondition(
                f"{claimed} already has an unfinished {kind.name.lower()}, {other}",
                [PreconditionViolation(f"{kind.name.upper()}_IN_PROGRESS", other, claimed)],
            )

    # -- tenants and quota policies ---------------------------------------------------

    async def get_tenant(self, caller: Principal, name: str) -> r.Record[r.Tenant]:
        tenant = names.parse_tenant(name, "name")
        caller.require_tenant(tenant)
        async with self._db.single_statement() as conn:
            row = await tenant_store.get(conn, tenant)
        if row is None:
            raise NotFound("Tenant", name)
        return self._record(kinds.TENANT, row)

    async def list_tenants(
        self, caller: Principal, size: int, token: str
    ) -> tuple[list[r.Record[r.Tenant]], str]:
        limit = page_size(size)
        after = decode_token(token, "tenants")
        only = None if caller.tenant is None else [caller.tenant]
        async with self._db.single_statement() as conn:
            rows = await tenant_store.list_page(conn, after=after, limit=limit + 1, only=only)
        page, next_token = paginate(rows, limit, "tenants", lambda row: row.id)
        return [self._record(kinds.TENANT, row) for row in page], next_token

    async def create_tenant(
        self, caller: Principal, id_: str, spec: r.Tenant
    ) -> r.Record[r.Tenant]:
        caller.require(Permission.TENANT_ADMIN)
        names.check_id(id_, "tenant_id")
        caller.require_tenant(id_)
        _check(kinds.TENANT, spec)
        now = datetime.now(UTC)
        row = ResourceRow(id_, kinds.TENANT.name, id_, _dumps(spec), etag_of(spec), now, now)
        name = names.tenant_name(id_)
        async with self._write() as conn:
            try:
                await tenant_store.insert(conn, row)
            except DuplicateKey as e:
                raise AlreadyExists("Tenant", name) from e
            await self._changed(conn, caller, "Tenant.create", name, tenant=id_)
        return self._record(kinds.TENANT, row)

    async def update_tenant(
        self, caller: Principal, name: str, incoming: r.Tenant, mask: Sequence[str], etag: str
    ) -> r.Record[r.Tenant]:
        caller.require(Permission.TENANT_ADMIN)
        tenant = names.parse_tenant(name, "tenant.name")
        caller.require_tenant(tenant)
        async with self._write() as conn:
            row = await tenant_store.get(conn, tenant)
            if row is None:
                raise NotFound("Tenant", name)
            existing = self._record(kinds.TENANT, row)
            spec = _revised(kinds.TENANT, existing, incoming, mask, etag, name)
            if spec is None:
                return existing
            new = dataclasses.replace(
                row, spec=_dumps(spec), etag=etag_of(spec), update_time=datetime.now(UTC)
            )
            if not await tenant_store.update(conn, new, existing.etag):
                raise EtagMismatch(name)
            await self._changed(conn, caller, "Tenant.update", name, tenant=tenant)
        return self._record(kinds.TENANT, new)

    async def delete_tenant(self, caller: Principal, name: str, etag: str, force: bool) -> None:
        caller.require(Permission.TENANT_ADMIN)
        tenant = names.parse_tenant(name, "name")
        caller.require_tenant(tenant)
        async with self._write() as conn:
            row = await tenant_store.get(conn, tenant)
            if row is None:
                raise NotFound("Tenant", name)
            if etag and etag != row.etag:
                raise EtagMismatch(name)
            held = await resource_store.count_in_tenant(
                conn, tenant, exclude_kinds=[kinds.QUOTA_POLICY.name]
            )
            if held and not force:
                raise FailedPrecondition(
                    f"tenant {name!r} still holds {held} resources; delete them or set force",
                    [PreconditionViolation("NOT_EMPTY", name, f"{held} resources")],
                )
            await tenant_store.delete(conn, tenant)
            await self._changed(
                conn, caller, "Tenant.delete", name, tenant=tenant, details={"force": force}
            )

    async def get_quota_policy(self, caller: Principal, name: str) -> r.Record[r.QuotaPolicy]:
        tenant = self._parse_quota_name(caller, name, "name")
        async with self._db.snapshot() as conn:
            return await self._quota_policy(conn, tenant, name)

    async def update_quota_policy(
        self,
        caller: Principal,
        name: str,
        incoming: r.QuotaPolicy,
        mask: Sequence[str],
        etag: str,
    ) -> r.Record[r.QuotaPolicy]:
        caller.require(Permission.TENANT_ADMIN)
        tenant = self._parse_quota_name(caller, name, "quota_policy.name")
        kind = kinds.QUOTA_POLICY
        async with self._write() as conn:
            existing = await self._quota_policy(conn, tenant, name, for_update=True)
            spec = _revised(kind, existing, incoming, mask, etag, name)
            if spec is None:
                return existing
            now = datetime.now(UTC)
            row = ResourceRow(
                tenant,
                kind.name,
                QUOTA_POLICY_ID,
                _dumps(spec),
                etag_of(spec),
                existing.create_time,
                now,
            )
            stored = await resource_store.get(conn, tenant, kind.name, QUOTA_POLICY_ID)
            if stored is None:
                await resource_store.insert(conn, row, [])
            elif not await resource_store.update(conn, row, existing.etag, []):
                raise EtagMismatch(name)
            await self._changed(
                conn,
                caller,
                "QuotaPolicy.update",
                name,
                tenant=tenant,
                details={"policy": codec.encode(spec)},
            )
        return self._record(kind, row)

    async def _quota_policy(
        self, conn: AsyncConnection, tenant: str, name: str, *, for_update: bool = False
    ) -> r.Record[r.QuotaPolicy]:
        row = await resource_store.get(
            conn, tenant, kinds.QUOTA_POLICY.name, QUOTA_POLICY_ID, for_update=for_update
        )
        if row is not None:
            return self._record(kinds.QUOTA_POLICY, row)
        tenant_row = await tenant_store.get(conn, tenant)
        if tenant_row is None:
            raise NotFound("Tenant", names.tenant_name(tenant))
        # Never set: the default policy, unlimited, as of the tenant's creation.
        spec = r.QuotaPolicy()
        return r.Record(
            tenant,
            QUOTA_POLICY_ID,
            spec,
            etag_of(spec),
            tenant_row.create_time,
            tenant_row.create_time,
        )

    # -- shared steps -------------------------------------------------------------

    @staticmethod
    def _parse_quota_name(caller: Principal, name: str, field: str) -> str:
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != "tenants" or parts[2] != QUOTA_POLICY_ID:
            raise InvalidArgument.of(field, f"{name!r} is not tenants/{{tenant}}/quotaPolicy")
        tenant = names.check_id(parts[1], field)
        caller.require_tenant(tenant)
        return tenant

    @staticmethod
    def _parse(caller: Principal, kind: Kind[Any], name: str, field: str) -> tuple[str, str]:
        tenant, id_ = _parse_ref(kind, name, field)
        caller.require_tenant(tenant)
        return tenant, id_

    async def _existing(
        self, conn: AsyncConnection, kind: Kind[S], tenant: str, id_: str, name: str, etag: str
    ) -> r.Record[S]:
        row = await resource_store.get(conn, tenant, kind.name, id_, for_update=True)
        if row is None:
            raise NotFound(kind.name, name)
        if etag and etag != row.etag:
            raise EtagMismatch(name)
        return self._record(kind, row)

    async def _resolve(
        self, conn: AsyncConnection, kind: Kind[S], tenant: str, spec: S
    ) -> list[Ref]:
        """Check that everything ``spec`` names exists in ``tenant``; the rows to record."""
        v = Violations(kind.request_field)
        wanted: dict[str, list[tuple[Reference, str]]] = defaultdict(list)
        refs: list[Ref] = []
        for ref in kind.references(spec):
            target_kind = kinds.TENANT_SCOPED[ref.kind]
            field = f"{kind.request_field}.{ref.field}"
            try:
                ref_tenant, ref_id = _parse_ref(target_kind, ref.name, field)
            except InvalidArgument as e:
                v.items.extend(e.violations)
                continue
            if ref_tenant != tenant:
                v.add(ref.field, f"{ref.name!r} lies outside tenant {tenant!r}")
                continue
            wanted[ref.kind].append((ref, ref_id))
            refs.append(Ref(ref.field, ref.kind, ref_id))
        v.raise_if_any()
        missing: list[PreconditionViolation] = []
        for target_kind_name, items in wanted.items():
            found = await resource_store.existing_ids(
                conn, tenant, target_kind_name, (i for _, i in items)
            )
            missing += [
                PreconditionViolation(
                    "MISSING_REFERENCE",
                    ref.name,
                    f"{kind.request_field}.{ref.field}: {target_kind_name} {ref.name!r} "
                    "does not exist",
                )
                for ref, ref_id in items
                if ref_id not in found
            ]
        if not missing and kind.check_state is not None:

            async def read(target_kind_name: str, name: str) -> Any:
                target = kinds.TENANT_SCOPED[target_kind_name]
                ref_tenant, ref_id = _parse_ref(target, name, "")
                row = await resource_store.get(conn, ref_tenant, target_kind_name, ref_id)
                return None if row is None else self._record(target, row).spec

            missing = await kind.check_state(spec, read)
        if missing:
            raise FailedPrecondition("; ".join(m.description for m in missing), missing)
        return refs

    @staticmethod
    async def _refuse_if_used(
        conn: AsyncConnection, kind: Kind[Any], tenant: str, ids: list[str]
    ) -> None:
        if not ids:
            return
        users = await resource_store.referrers(conn, tenant, kind.name, ids)
        if users:
            violations = [
                PreconditionViolation(
                    "IN_USE",
                    resource_name(kinds.TENANT_SCOPED[u.kind], tenant, u.id),
                    f"{u.kind} {resource_name(kinds.TENANT_SCOPED[u.kind], tenant, u.id)!r} "
                    f"uses it ({u.field})",
                )
                for u in users
            ]
            target = resource_name(kind, tenant, ids[0])
            raise FailedPrecondition(
                f"{kind.name} {target!r} is in use: "
                + "; ".join(v.description for v in violations),
                violations,
            )


@dataclass(frozen=True)
class Modification(Generic[S]):
    """What ``Registry.modify`` writes: the new spec, the audit action and details, and
    optionally a label move (prompt name, label, version) made with it."""

    spec: S
    action: str
    details: dict[str, Any] | None = None
    move_label: tuple[str, str, str] | None = None


def _revised(
    kind: Kind[S], existing: r.Record[S], incoming: S, mask: Sequence[str], etag: str, name: str
) -> S | None:
    """The spec an update asks for, checked; None when it changes nothing. ABORTED when
    the caller's etag is not the stored one."""
    if etag and etag != existing.etag:
        raise EtagMismatch(name)
    spec = apply_mask(existing.spec, incoming, mask, output_only=kind.output_only)
    _check(kind, spec)
    return None if etag_of(spec) == existing.etag else spec


def _check(kind: Kind[S], spec: S) -> None:
    v = Violations(kind.request_field)
    kind.check(spec, v)
    v.raise_if_any()


def _clear_output_only(kind: Kind[S], spec: S) -> S:
    if not kind.output_only:
        return spec
    blank = kind.spec_type()
    return dataclasses.replace(
        spec,  # type: ignore[type-var]
        **{name: getattr(blank, name) for name in kind.output_only},
    )


def _dumps(spec: Any) -> str:
    return codec.canonical_json(spec).decode()


def _changed_fields(before: Any, after: Any) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(before)
        if getattr(before, f.name) != getattr(after, f.name)
    ]


def _changed_underneath(name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"a resource {name!r} refers to changed while this request ran; retry",
        [PreconditionViolation("CONCURRENT_CHANGE", name, "a referenced resource changed")],
    )
