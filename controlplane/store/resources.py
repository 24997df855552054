"""Registry resources and the references between them. Every query is scoped by tenant."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.errors import DuplicateKey, ReferenceViolation
from controlplane.store.rows import Ref, Referrer, ResourceRow
from controlplane.store.schema import resource_refs, resources

_COLUMNS = (
    resources.c.tenant,
    resources.c.kind,
    resources.c.id,
    resources.c.spec,
    resources.c.etag,
    resources.c.create_time,
    resources.c.update_time,
)


def _row(r: Sequence[Any]) -> ResourceRow:
    return ResourceRow(*r)


def _key(tenant: str, kind: str, id_: str) -> sa.ColumnElement[bool]:
    return sa.and_(resources.c.tenant == tenant, resources.c.kind == kind, resources.c.id == id_)


async def get(
    conn: AsyncConnection, tenant: str, kind: str, id_: str, *, for_update: bool = False
) -> ResourceRow | None:
    """One resource; ``for_update`` locks its row until the transaction ends (PostgreSQL;
    SQLite's write transactions are already exclusive)."""
    query = sa.select(*_COLUMNS).where(_key(tenant, kind, id_))
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    result = await conn.execute(query)
    row = result.first()
    return None if row is None else _row(row)


async def list_page(
    conn: AsyncConnection,
    tenant: str,
    kind: str,
    *,
    after: str,
    limit: int,
    prefix: str = "",
) -> list[ResourceRow]:
    """Up to ``limit`` rows with ids greater than ``after`` (and starting with ``prefix``),
    in id order."""
    query = sa.select(*_COLUMNS).where(resources.c.tenant == tenant, resources.c.kind == kind)
    if after:
        query = query.where(resources.c.id > after)
    if prefix:
        query = query.where(resources.c.id.startswith(prefix, autoescape=True))
    query = query.order_by(resources.c.id).limit(limit)
    return [_row(r) for r in await conn.execute(query)]


async def list_all(
    conn: AsyncConnection, tenant: str, kind: str, prefix: str = ""
) -> list[ResourceRow]:
    """Every resource of a kind (whose id starts with ``prefix``), in id order."""
    query = sa.select(*_COLUMNS).where(resources.c.tenant == tenant, resources.c.kind == kind)
    if prefix:
        query = query.where(resources.c.id.startswith(prefix, autoescape=True))
    return [_row(r) for r in await conn.execute(query.order_by(resources.c.id))]


async def list_everything(conn: AsyncConnection, kind: str | None = None) -> list[ResourceRow]:
    """Every resource of every tenant (configuration snapshots read the whole registry),
    or every one of ``kind``."""
    query = sa.select(*_COLUMNS).order_by(resources.c.tenant, resources.c.kind, resources.c.id)
    if kind is not None:
        query = query.where(resources.c.kind == kind)
    return [_row(r) for r in await conn.execute(query)]


async def existing_ids(
    conn: AsyncConnection, tenant: str, kind: str, ids: Iterable[str]
) -> set[str]:
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    query = sa.select(resources.c.id).where(
        resources.c.tenant == tenant, resources.c.kind == kind, resources.c.id.in_(wanted)
    )
    return set((await conn.execute(query)).scalars())


async def insert(conn: AsyncConnection, row: ResourceRow, refs: Sequence[Ref]) -> None:
    try:
        await conn.execute(
            resources.insert().values(
                tenant=row.tenant,
                kind=row.kind,
                id=row.id,
                spec=row.spec,
                etag=row.etag,
                create_time=row.create_time,
                update_time=row.update_time,
            )
        )
    except IntegrityError as e:
        if await get(conn, row.tenant, row.kind, row.id) is not None:
            raise DuplicateKey(row.id) from e
        raise ReferenceViolation(row.tenant) from e
    await _insert_refs(conn, row.tenant, row.kind, row.id, refs)


async def update(
    conn: AsyncConnection, row: ResourceRow, expected_etag: str, refs: Sequence[Ref]
) -> bool:
    """Replace the spec if the stored etag is still ``expected_etag``. False if it is not."""
    result = await conn.execute(
        resources.update()
        .where(_key(row.tenant, row.kind, row.id), resources.c.etag == expected_etag)
        .values(spec=row.spec, etag=row.etag, update_time=row.update_time)
    )
    if result.rowcount != 1:
        return False
    await conn.execute(
        resource_refs.delete().where(
            resource_refs.c.tenant == row.tenant,
            resource_refs.c.from_kind == row.kind,
            resource_refs.c.from_id == row.id,
        )
    )
    await _insert_refs(conn, row.tenant, row.kind, row.id, refs)
    return True


async def _insert_refs(
    conn: AsyncConnection, tenant: str, kind: str, id_: str, refs: Sequence[Ref]
) -> None:
    if not refs:
        return
    try:
        await conn.execute(
            resource_refs.insert(),
            [
                {
                    "tenant": tenant,
                    "from_kind": kind,
                    "from_id": id_,
                    "field": ref.field,
                    "to_kind": ref.to_kind,
                    "to_id": ref.to_id,
                }
                for ref in refs
            ],
        )
    except IntegrityError as e:
        raise ReferenceViolation(f"{kind} {id_}") from e


async def delete(conn: AsyncConnection, tenant: str, kind: str, id_: str) -> int:
    """Delete one resource. Raises ReferenceViolation while it is still referenced."""
    try:
        result = await conn.execute(resources.delete().where(_key(tenant, kind, id_)))
    except IntegrityError as e:
        raise ReferenceViolation(f"{kind} {id_}") from e
    return result.rowcount


async def delete_prefix(conn: AsyncConnection, tenant: str, kind: str, prefix: str) -> int:
    """Delete every resource of a kind whose id starts with ``prefix`` (a prompt's
    versions). Raises ReferenceViolation while any is still referenced."""
    condition = sa.and_(
        resources.c.tenant == tenant,
        resources.c.kind == kind,
        resources.c.id.startswith(prefix, autoescape=True),
    )
    try:
        result = await conn.execute(resources.delete().where(condition))
    except IntegrityError as e:
        raise ReferenceViolation(f"{kind} {prefix}*") from e
    return result.rowcount


async def referrers(
    conn: AsyncConnection, tenant: str, kind: str, ids: Sequence[str]
) -> list[Referrer]:
    """Resources that name any of ``ids`` (of ``kind``), excluding those ids themselves."""
    query = (
        sa.select(resource_refs.c.from_kind, resource_refs.c.from_id, resource_refs.c.field)
        .where(
            resource_refs.c.tenant == tenant,
            resource_refs.c.to_kind == kind,
            resource_refs.c.to_id.in_(list(ids)),
        )
        .order_by(resource_refs.c.from_kind, resource_refs.c.from_id, resource_refs.c.field)
    )
    found = [Referrer(*r) for r in await conn.execute(query)]
    return [r for r in found if not (r.kind == kind and r.id in ids)]


async def count_in_tenant(
    conn: AsyncConnection, tenant: str, *, exclude_kinds: Sequence[str] = ()
) -> int:
    query = sa.select(sa.func.count()).select_from(resources).where(resources.c.tenant == tenant)
    if exclude_kinds:
        query = query.where(resources.c.kind.not_in(list(exclude_kinds)))
    return int((await conn.execute(query)).scalar_one())
