"""Leasing tenants' limits to executors, and telling how much of them is left.

Every lease change runs in one transaction that locks the tenant's account, so the
grants of a tenant are decided one at a time against what its other leases hold: the USD
granted and not yet reported spent, plus the USD reported spent, never passes a budget;
the rate shares and slots of live leases never sum past their limits.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.engine import Connection

from controlplane.auth.principal import Principal
from controlplane.errors import FailedPrecondition
from controlplane.quota.allocation import NANO_PER_USD, Ask, Holder, Windows, grant
from controlplane.registry import names
from controlplane.registry import resources as r
from controlplane.registry.service import Registry
from controlplane.store import quota as quota_store
from controlplane.store.database import Database
from controlplane.store.quota import AccountRow, LeaseRow

USD_LIMITS = ("usd_per_day", "usd_per_month")
LIMITS = (*USD_LIMITS, "tokens_per_minute", "requests_per_minute", "max_concurrent_runs")
SCARCE_PART = 10
"""A limit with less than this part of it free is scarce: leases of the tenant are renewed
this many times as often."""
MIN_REFRESH = timedelta(milliseconds=200)
MAX_NANO = 2**62
"""USD budgets count in a signed 64-bit column; a larger one is this."""


@dataclass(frozen=True)
class Slice:
    """Amounts of the four things a lease holds (USD in nano-USD)."""

    usd_nano: int = 0
    tokens_per_minute: int = 0
    requests_per_minute: int = 0
    run_slots: int = 0

    def by_limit(self) -> dict[str, int]:
        return {
            "usd_per_day": self.usd_nano,
            "usd_per_month": self.usd_nano,
            "tokens_per_minute": self.tokens_per_minute,
            "requests_per_minute": self.requests_per_minute,
            "max_concurrent_runs": self.run_slots,
        }


@dataclass(frozen=True)
class LeaseAsk:
    """An executor's request: what it spent since it last reported, what it has in use
    (USD reserved by calls in flight, slots of running runs), what it needs beyond that
    for the call or run waiting on it, what it wants to hold in all."""

    spent_nano: int
    in_use: Slice
    needs: Slice
    wants: Slice


@dataclass(frozen=True)
class Granted:
    """What a lease holds, of the kinds the tenant's policy limits."""

    lease_id: str
    limited: frozenset[str]
    """Of the kinds a lease holds (the fields of ``Slice``), those the policy limits."""
    expire_time: datetime
    refresh_interval: timedelta
    failure_mode: r.FailureMode
    held: Slice
    """What the lease holds (kinds that are not limited: 0)."""
    free: Slice
    """What no lease holds after this grant (kinds that are not limited: 0)."""
    held_elsewhere: Slice
    """What the tenant's other leases hold (USD reserved by calls in flight included:
    what those calls do not spend comes back)."""


@dataclass(frozen=True)
class Balance:
    limit: str
    allowed: int
    """USD limits in nano-USD."""
    spent: int | None
    """USD limits: reported spent in the window; None for rates and slots."""
    held: int
    remaining: int
    window_end: datetime | None


def _pools(policy: r.QuotaPolicy, account: AccountRow) -> dict[str, int]:
    pools: dict[str, int] = {}
    spent = {"usd_per_day": account.day_spent_nano, "usd_per_month": account.month_spent_nano}
    for limit in LIMITS:
        value = getattr(policy, limit)
        if value is None:
            continue
        if limit in USD_LIMITS:
            pools[limit] = min(int(Decimal(value) * NANO_PER_USD), MAX_NANO) - spent[limit]
        else:
            pools[limit] = int(value)
    return pools


def _counted(lease: LeaseRow, windows: Windows, now: datetime) -> dict[str, int]:
    """What a lease holds against each limit now: its USD against the windows it was
    granted from while they last; its shares and slots while it is live."""
    live = lease.expire_time > now
    return {
        "usd_per_day": lease.usd_nano if lease.day == windows.day else 0,
        "usd_per_month": lease.usd_nano if lease.month == windows.month else 0,
        "tokens_per_minute": lease.tokens_per_minute if live else 0,
        "requests_per_minute": lease.requests_per_minute if live else 0,
        "max_concurrent_runs": lease.run_slots if live else 0,
    }


def _wants(lease: LeaseRow) -> dict[str, int]:
    return Slice(
        lease.wants_usd_nano,
        lease.wants_tokens_per_minute,
        lease.wants_requests_per_minute,
        lease.wants_run_slots,
    ).by_limit()


def _spend(account: AccountRow, day: str, month: str, nano: int) -> AccountRow:
    """``account`` with ``nano`` spent from USD granted in windows ``day`` and ``month``
    (a window that has ended since is not charged)."""
    return AccountRow(
        account.tenant,
        account.day,
        account.day_spent_nano + (nano if day == account.day else 0),
        account.month,
        account.month_spent_nano + (nano if month == account.month else 0),
    )


class Quotas:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        *,
        lease_ttl: timedelta = timedelta(seconds=30),
        refresh_interval: timedelta = timedelta(seconds=5),
    ) -> None:
        self._db = db
        self._registry = registry
        self.lease_ttl = lease_ttl
        self.refresh_interval = refresh_interval

    async def _policy(self, caller: Principal, tenant: str) -> r.QuotaPolicy:
        name = f"{names.tenant_name(tenant)}/quotaPolicy"
        return (await self._registry.get_quota_policy(caller, name)).spec

    async def acquire(
        self, caller: Principal, tenant: str, executor: str, lease_id: str, ask: LeaseAsk
    ) -> Granted:
        caller.require_tenant(tenant)
        policy = await self._policy(caller, tenant)
        now = datetime.now(UTC)
        return await self._db.write(
            lambda conn: self._acquire(conn, policy, tenant, executor, lease_id, ask, now)
        )

    def _acquire(
        self,
        conn: Connection,
        policy: r.QuotaPolicy,
        tenant: str,
        executor: str,
        lease_id: str,
        ask: LeaseAsk,
        now: datetime,
    ) -> Granted:
        windows = Windows.at(now)
        account = quota_store.lock_account(conn, tenant, windows.day, windows.month)
        leases = quota_store.leases(conn, tenant)
        mine = next((lease for lease in leases if lease.id == lease_id), None) if lease_id else None
        if mine is not None and mine.executor != executor:
            raise FailedPrecondition(
                f"lease {lease_id!r} is held by executor {mine.executor!r}, not {executor!r}"
            )
        spent_from = (mine.day, mine.month) if mine is not None else (windows.day, windows.month)
        account = _spend(account, *spent_from, ask.spent_nano)
        others = [lease for lease in leases if lease is not mine]
        in_use = ask.in_use.by_limit()
        needs = {limit: in_use[limit] + n for limit, n in ask.needs.by_limit().items()}
        pools = _pools(policy, account)
        counted = [_counted(lease, windows, now) for lease in others]
        # USD others have waited for longer than this lease is theirs first.
        since = mine.waiting_since if mine is not None and mine.waiting_since else now
        owed = sum(
            lease.waiting_usd_nano
            for lease in others
            if lease.expire_time > now
            and lease.waiting_since is not None
            and lease.waiting_since < since
        )
        granted = grant(
            pools,
            Ask(in_use, needs, ask.wants.by_limit()),
            [
                Holder(held, _wants(lease), lease.expire_time > now)
                for lease, held in zip(others, counted, strict=True)
            ],
            {limit: owed for limit in USD_LIMITS},
        )
        usd = [granted[limit] for limit in USD_LIMITS if limit in granted]
        short = bool(usd) and min(usd) < in_use["usd_per_day"] + ask.needs.usd_nano
        lease = LeaseRow(
            mine.id if mine is not None else str(uuid.uuid4()),
            tenant,
            executor,
            windows.day,
            windows.month,
            min(usd) if usd else 0,
            granted.get("tokens_per_minute", 0),
            granted.get("requests_per_minute", 0),
            granted.get("max_concurrent_runs", 0),
            ask.wants.usd_nano,
            ask.wants.tokens_per_minute,
            ask.wants.requests_per_minute,
            ask.wants.run_slots,
            ask.needs.usd_nano if short else 0,
            since if short else None,
            now + self.lease_ttl,
            now,
        )
        quota_store.put_lease(conn, lease, new=mine is None)
        quota_store.save_account(conn, account)
        # This lease was just renewed, so only others' can go.
        quota_store.delete_spent_leases(conn, tenant, now, windows.month)
        held = Slice(
            lease.usd_nano, lease.tokens_per_minute, lease.requests_per_minute, lease.run_slots
        )
        elsewhere = {limit: sum(c[limit] for c in counted) for limit in pools}

        free = {limit: pools[limit] - elsewhere[limit] - held.by_limit()[limit] for limit in pools}
        # The USD budget with the least free decides.
        binding = min(
            (limit for limit in USD_LIMITS if limit in pools), key=free.__getitem__, default=""
        )
        # Little left free: renew sooner, so what others hold and do not use comes back.
        scarce = any(free[limit] * SCARCE_PART < pool for limit, pool in pools.items() if pool > 0)

        def kinds(values: dict[str, int]) -> Slice:
            return Slice(
                values.get(binding, 0),
                values.get("tokens_per_minute", 0),
                values.get("requests_per_minute", 0),
                values.get("max_concurrent_runs", 0),
            )

        kinds_of = {
            "usd_per_day": "usd_nano",
            "usd_per_month": "usd_nano",
            "tokens_per_minute": "tokens_per_minute",
            "requests_per_minute": "requests_per_minute",
            "max_concurrent_runs": "run_slots",
        }
        return Granted(
            lease.id,
            frozenset(kinds_of[limit] for limit in granted),
            lease.expire_time,
            max(self.refresh_interval / SCARCE_PART, MIN_REFRESH)
            if scarce
            else self.refresh_interval,
            policy.failure_mode,
            held,
            kinds({k: max(v, 0) for k, v in free.items()}),
            kinds(elsewhere),
        )

    async def release(self, caller: Principal, tenant: str, lease_id: str, spent_nano: int) -> None:
        """End a lease, charging what it spent last. Releasing a lease the control plane
        no longer holds charges the spending all the same, to the current windows."""
        caller.require_tenant(tenant)
        now = datetime.now(UTC)

        def release(conn: Connection) -> None:
            windows = Windows.at(now)
            account = quota_store.lock_account(conn, tenant, windows.day, windows.month)
            mine = next((x for x in quota_store.leases(conn, tenant) if x.id == lease_id), None)
            spent_from = (mine.day, mine.month) if mine else (windows.day, windows.month)
            quota_store.save_account(conn, _spend(account, *spent_from, spent_nano))
            quota_store.delete_leases(conn, [lease_id])

        await self._db.write(release)

    async def expire_leases(self, now: datetime | None = None) -> int:
        """Remove the spent leases (expired, and counting against nothing) of every
        tenant: the grants of a tenant remove its own too; this reaches tenants whose
        executors went away. How many went."""
        now = now or datetime.now(UTC)
        windows = Windows.at(now)
        async with self._db.snapshot() as conn:
            tenants = await quota_store.tenants_with_spent_leases(conn, now, windows.month)

        def expire(conn: Connection, tenant: str) -> int:
            quota_store.lock_account(conn, tenant, windows.day, windows.month)
            return quota_store.delete_spent_leases(conn, tenant, now, windows.month)

        total = 0
        for tenant in tenants:
            total += await self._db.write(functools.partial(expire, tenant=tenant))
        return total

    async def balance(
        self, caller: Principal, tenant: str
    ) -> tuple[list[Balance], int, r.FailureMode]:
        """Each limit of the tenant's policy: allowed, spent, held, remaining; the number
        of live leases; the policy's failure mode."""
        caller.require_tenant(tenant)
        policy = await self._policy(caller, tenant)
        now = datetime.now(UTC)
        windows = Windows.at(now)
        async with self._db.snapshot() as conn:
            account, leases = await quota_store.read(conn, tenant)
        account = (account or AccountRow(tenant, "", 0, "", 0)).in_windows(
            windows.day, windows.month
        )
        pools = _pools(policy, account)
        counted = [_counted(lease, windows, now) for lease in leases]
        spent = {"usd_per_day": account.day_spent_nano, "usd_per_month": account.month_spent_nano}
        ends = {"usd_per_day": windows.day_end, "usd_per_month": windows.month_end}
        balances = []
        for limit, pool in pools.items():
            held = sum(c[limit] for c in counted)
            balances.append(
                Balance(
                    limit,
                    pool + spent.get(limit, 0),
                    spent.get(limit),
                    held,
                    max(pool - held, 0),
                    ends.get(limit),
                )
            )
        live = sum(1 for lease in leases if lease.expire_time > now)
        return balances, live, policy.failure_mode
