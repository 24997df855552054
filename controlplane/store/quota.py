"""Quota accounts and leases. Writers lock the tenant's account row first, so one
tenant's leases change one at a time (on SQLite the write transaction does that)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import quota_accounts, quota_leases


@dataclass(frozen=True)
class AccountRow:
    tenant: str
    day: str
    day_spent_nano: int
    month: str
    month_spent_nano: int

    def in_windows(self, day: str, month: str) -> AccountRow:
        """The account as of windows ``day`` and ``month``: a window that ended is spent
        from zero."""
        return replace(
            self,
            day=day,
            day_spent_nano=self.day_spent_nano if self.day == day else 0,
            month=month,
            month_spent_nano=self.month_spent_nano if self.month == month else 0,
        )


@dataclass(frozen=True)
class LeaseRow:
    id: str
    tenant: str
    executor: str
    day: str
    month: str
    """The windows its USD was granted from."""
    usd_nano: int
    tokens_per_minute: int
    requests_per_minute: int
    run_slots: int
    wants_usd_nano: int
    wants_tokens_per_minute: int
    wants_requests_per_minute: int
    wants_run_slots: int
    waiting_usd_nano: int
    """USD a call of the executor waits for and was not granted."""
    waiting_since: datetime | None
    expire_time: datetime
    update_time: datetime


_LEASE_COLUMNS = [quota_leases.c[f] for f in LeaseRow.__dataclass_fields__]


def lock_account(conn: Connection, tenant: str, day: str, month: str) -> AccountRow:
    """The tenant's account, created if it has none, locked until the transaction ends,
    in the windows ``day`` and ``month``."""
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    conn.execute(
        insert(quota_accounts)
        .values(tenant=tenant, day=day, day_spent_nano=0, month=month, month_spent_nano=0)
        .on_conflict_do_nothing(index_elements=["tenant"])
    )
    query = sa.select(quota_accounts).where(quota_accounts.c.tenant == tenant)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one()
    return AccountRow(*row).in_windows(day, month)


def save_account(conn: Connection, account: AccountRow) -> None:
    conn.execute(
        quota_accounts.update()
        .where(quota_accounts.c.tenant == account.tenant)
        .values(
            day=account.day,
            day_spent_nano=account.day_spent_nano,
            month=account.month,
            month_spent_nano=account.month_spent_nano,
        )
    )


def _leases_query(tenant: str) -> sa.Select[Any]:
    return sa.select(*_LEASE_COLUMNS).where(quota_leases.c.tenant == tenant)


def leases(conn: Connection, tenant: str) -> list[LeaseRow]:
    return [LeaseRow(*r) for r in conn.execute(_leases_query(tenant))]


def put_lease(conn: Connection, lease: LeaseRow, *, new: bool) -> None:
    values = {c.name: getattr(lease, c.name) for c in _LEASE_COLUMNS}
    if new:
        conn.execute(quota_leases.insert().values(values))
    else:
        conn.execute(quota_leases.update().where(quota_leases.c.id == lease.id).values(values))


def delete_leases(conn: Connection, ids: Sequence[str]) -> None:
    if ids:
        conn.execute(quota_leases.delete().where(quota_leases.c.id.in_(ids)))


def _spent(now: datetime, month: str) -> sa.ColumnElement[bool]:
    """Leases that expired and no longer count against anything: no USD held, or USD of
    a month that ended (USD an expired lease held in the current month still counts: its
    executor may have spent it)."""
    return sa.and_(
        quota_leases.c.expire_time <= now,
        sa.or_(quota_leases.c.usd_nano == 0, quota_leases.c.month != month),
    )


def delete_spent_leases(conn: Connection, tenant: str, now: datetime, month: str) -> int:
    """Remove the tenant's spent leases (see ``_spent``); how many went."""
    return conn.execute(
        quota_leases.delete().where(quota_leases.c.tenant == tenant, _spent(now, month))
    ).rowcount


async def tenants_with_spent_leases(conn: AsyncConnection, now: datetime, month: str) -> list[str]:
    query = sa.select(quota_leases.c.tenant).where(_spent(now, month)).distinct()
    return list((await conn.execute(query)).scalars())


async def read(conn: AsyncConnection, tenant: str) -> tuple[AccountRow | None, list[LeaseRow]]:
    """The tenant's account (None: no lease was ever taken) and leases, to look at."""
    account = (
        await conn.execute(sa.select(quota_accounts).where(quota_accounts.c.tenant == tenant))
    ).one_or_none()
    rows = await conn.execute(_leases_query(tenant))
    return (None if account is None else AccountRow(*account)), [LeaseRow(*r) for r in rows]
