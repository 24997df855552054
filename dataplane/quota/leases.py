"""The executor's quota leases: slices of each tenant's limits, leased from the control
plane's QuotaService and spent here without a call to it per run or model call.

For a tenant whose policy (from the configuration snapshot) sets limits, this executor
holds one lease. A run takes one of its slots while it runs here; a model call reserves
its worst-case cost and tokens, and one request, before it is made, and settles the
actual after. Only when what the lease holds does not cover a run or a call is the
control plane asked, at once, for more; otherwise leases are renewed in the background
every refresh interval, reporting what was spent and asking for what recent demand
suggests. While a renewal is in flight nothing new is reserved, so what the control plane
grants always covers what is in use here.

When the control plane cannot be reached, a lease is spent to its expiry; after that the
policy's failure mode decides: fail closed refuses new runs and model calls, fail open
admits them at the rates last granted, and what they spend is reported once the control
plane answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc

from dataplane.config.watcher import ConfigWatcher
from dataplane.quota.bucket import TokenBucket
from pilothouse.v1 import quota_pb2, quota_pb2_grpc, tenant_pb2
from storekit.loop import wait_event

log = logging.getLogger("pilothouse.executor.quota")

DEFAULT_REFRESH = 5.0
"""Seconds between renewals until the control plane says otherwise."""
IDLE_AFTER = 60.0
"""A lease nothing used for this long is released."""
FIRST_SLICE_PARTS = 50
"""Before the cost of its calls is known, a lease asks for this part of the budget."""
RETRY_SLOT = 1.0
"""Seconds a run refused for want of a slot is told to wait."""
CONTENDED = 0.2
"""Seconds between renewals of a call waiting for USD that other executors hold."""
MAX_WAIT = 30.0
"""Seconds a model call waits at most for quota (its run's deadline may say less)."""
NANO = Decimal("0.000000001")
"""The least USD the control plane counts."""


class QuotaExceeded(Exception):
    """A run or model call that the tenant's quota does not allow now."""

    def __init__(self, tenant: str, limit: str, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.limit = limit
        self.retry_after = retry_after


class Reservation:
    """What a model call reserved; ``settle`` once with what it used."""

    def __init__(self, lease: TenantLease | None, usd: Decimal, tokens: int) -> None:
        self._lease = lease
        self.usd = usd
        self.tokens = tokens

    def settle(self, usd: Decimal, tokens: int) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.settle(self, usd, tokens)


class RunSlot:
    """A concurrent-run slot a run holds while it runs here; ``release`` when it stops
    running here (more than once is harmless)."""

    def __init__(self, lease: TenantLease | None) -> None:
        self._lease = lease

    def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.slots_used -= 1
            lease.touch()


UNLIMITED_SLOT = RunSlot(None)


def _limited(policy: tenant_pb2.QuotaPolicy) -> bool:
    return any(
        policy.HasField(f)
        for f in (
            "usd_per_day",
            "usd_per_month",
            "tokens_per_minute",
            "requests_per_minute",
            "max_concurrent_runs",
        )
    )


def _until_window_end(policy: tenant_pb2.QuotaPolicy) -> float:
    """Seconds until the USD budget that ends first starts again."""
    now = datetime.now(UTC)
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    if not policy.HasField("usd_per_day"):
        month = now.replace(day=28) + timedelta(days=4)
        tomorrow = datetime.combine(month.replace(day=1).date(), datetime.min.time(), UTC)
    return max((tomorrow - now).total_seconds(), 1.0)


@dataclass
class _Demand:
    """What was asked of a lease since it was last renewed, to size the next ask."""

    usd_spent: Decimal = Decimal(0)
    short: bool = False
    """Something did not fit in what the lease held."""
    throttled: bool = False
    """A rate bucket made something wait."""
    active: bool = False


class TenantLease:
    """One tenant's lease on this executor, and what is spent and reserved against it."""

    def __init__(
        self,
        tenant: str,
        policy: tenant_pb2.QuotaPolicy,
        renew: Callable[[TenantLease], asyncio.Future[None]],
        clock: Callable[[], float],
    ) -> None:
        self.tenant = tenant
        self.policy = policy
        self._renew = renew
        self._clock = clock
        self.lease_id = ""
        # Nothing is held until the first grant; None: that kind is not limited.
        usd_limited = policy.HasField("usd_per_day") or policy.HasField("usd_per_month")
        self.usd_held: Decimal | None = Decimal(0) if usd_limited else None
        self.usd_spent = Decimal(0)
        """Settled since the last report to the control plane."""
        self.usd_reserved = Decimal(0)
        self.tokens = TokenBucket(0, clock=clock) if policy.HasField("tokens_per_minute") else None
        self.requests = (
            TokenBucket(0, clock=clock) if policy.HasField("requests_per_minute") else None
        )
        self.slots_held: int | None = 0 if policy.HasField("max_concurrent_runs") else None
        self.slots_used = 0
        self.expires_at = 0.0
        self.refresh_at = 0.0
        self.refresh = DEFAULT_REFRESH
        self.reachable = True
        self.renewing: asyncio.Future[None] | None = None
        self.renewals = 0
        """Renewals started so far; ``renewing`` is the last of them while in flight."""
        self.waiting_usd: list[Decimal] = []
        """USD of the calls waiting for a renewal."""
        self.waiting_slots = 0
        self.free_usd = Decimal(0)
        self.elsewhere_usd = Decimal(0)
        """At the last renewal: USD of the tenant's that no lease held, and that other
        executors' leases held."""
        self.demand = _Demand()
        self.largest_call = Decimal(0)
        self.smallest_call: Decimal | None = None
        self.last_used = clock()

    def touch(self) -> None:
        self.last_used = self._clock()
        self.demand.active = True

    @property
    def fail_open(self) -> bool:
        return self.policy.failure_mode == tenant_pb2.FAILURE_MODE_FAIL_OPEN

    def in_force(self) -> bool:
        return self._clock() < self.expires_at

    @property
    def usd_available(self) -> Decimal | None:
        if self.usd_held is None:
            return None
        return self.usd_held - self.usd_spent - self.usd_reserved

    def idle(self) -> bool:
        return (
            self.slots_used == 0
            and self.usd_reserved == 0
            and self._clock() - self.last_used > IDLE_AFTER
        )

    async def _settled(self) -> None:
        while self.renewing is not None:
            await asyncio.shield(self.renewing)

    async def _more(self, *, usd: Decimal = Decimal(0), slots: int = 0) -> None:
        """Wait for a renewal that knows of this need: one started after it was noted
        (joining one in flight that did, or starting one). A caller cancelled meanwhile
        does not cancel the renewal others wait on."""
        self.demand.short = True
        self.waiting_usd.append(usd)
        self.waiting_slots += slots
        known = self.renewals
        try:
            while True:
                if self.renewing is None:
                    await asyncio.shield(self._renew(self))
                    return
                covering = self.renewals > known
                await asyncio.shield(self.renewing)
                if covering:
                    return
        finally:
            self.waiting_usd.remove(usd)
            self.waiting_slots -= slots

    def _worth_waiting(self, usd: Decimal, give_up: float) -> bool:
        """Whether USD held elsewhere might come back in time to cover ``usd``."""
        return self.free_usd + self.elsewhere_usd >= usd and self._clock() + CONTENDED < give_up

    def _unreachable(self) -> QuotaExceeded:
        return QuotaExceeded(
            self.tenant,
            "lease",
            f"tenant {self.tenant!r}: the quota lease expired and the control plane cannot "
            "be reached (the policy fails closed)",
            retry_after=self.refresh,
        )

    def _budget_spent(self) -> QuotaExceeded:
        budgets = ", ".join(
            f"{f} {getattr(self.policy, f)}"
            for f in ("usd_per_day", "usd_per_month")
            if self.policy.HasField(f)
        )
        return QuotaExceeded(
            self.tenant,
            "usd_per_day" if self.policy.HasField("usd_per_day") else "usd_per_month",
            f"tenant {self.tenant!r} has spent its USD budget ({budgets})",
            retry_after=_until_window_end(self.policy),
        )

    async def check_budget(self) -> None:
        """Refuse (``QuotaExceeded``) a run queued for the pool when the tenant's USD
        budget is spent, as ``take_slot`` refuses one starting here: it could not pay for
        its first call, and would only fail once an executor took it."""
        self.touch()
        asked = False
        while True:
            await self._settled()
            available = self.usd_available
            least = self.smallest_call or Decimal(0)
            if not self.in_force() or available is None or (available > 0 and available >= least):
                return
            if not asked and self.reachable:
                asked = True
                await self._more(usd=max(least - available, Decimal(0)))
                continue
            if self.reachable and self.free_usd + self.elsewhere_usd < max(least, NANO):
                raise self._budget_spent()
            return

    async def take_slot(self, *, budget: bool = True) -> RunSlot:
        """A slot for a run starting here; refuses (``QuotaExceeded``) when the tenant
        has no slot free, its USD budget is spent (``budget``: look), or its request
        rate is used up."""
        self.touch()
        asked = False
        while True:
            await self._settled()
            if not self.in_force():
                if not asked:  # the control plane may be back
                    asked = True
                    await self._more(slots=1)
                    continue
                if not self.fail_open:
                    raise self._unreachable()
                break
            if self.slots_held is not None and self.slots_used >= self.slots_held:
                if not asked and self.reachable:
                    asked = True
                    await self._more(slots=1)
                    continue
                raise QuotaExceeded(
                    self.tenant,
                    "max_concurrent_runs",
                    f"tenant {self.tenant!r} runs as many runs at once as its quota allows "
                    f"({self.policy.max_concurrent_runs})",
                    retry_after=RETRY_SLOT,
                )
            # A run that could not pay for its first call is refused now: unless what
            # other executors hold may come back for it.
            available = self.usd_available
            least = self.smallest_call or Decimal(0)
            if budget and available is not None and (available <= 0 or available < least):
                if not asked and self.reachable:
                    asked = True
                    await self._more(usd=max(least - available, Decimal(0)))
                    continue
                if self.reachable and self.free_usd + self.elsewhere_usd < max(least, NANO):
                    raise self._budget_spent()
            if self.requests is not None and (wait := self.requests.wait_for(1)) > 0:
                self.demand.throttled = True
                raise QuotaExceeded(
                    self.tenant,
                    "requests_per_minute",
                    f"tenant {self.tenant!r} is at its request rate "
                    f"({self.policy.requests_per_minute} per minute)",
                    retry_after=wait if math.isfinite(wait) else self.refresh,
                )
            break
        self.slots_used += 1
        return RunSlot(self)

    async def reserve(self, usd: Decimal, tokens: int, *, deadline: float | None) -> Reservation:
        """Reserve a model call's worst case. A call the lease does not cover waits for a
        renewal, and, while other executors hold enough that may come back, for more
        renewals (not past ``deadline``, a monotonic time, nor ``MAX_WAIT``); the rate
        buckets are waited for likewise."""
        self.touch()
        self.largest_call = max(self.largest_call, usd)
        self.smallest_call = usd if self.smallest_call is None else min(self.smallest_call, usd)
        give_up = self._clock() + MAX_WAIT
        if deadline is not None:
            give_up = min(give_up, deadline)
        asked = False
        while True:
            await self._settled()
            in_force = self.in_force()
            available = self.usd_available
            if in_force and (available is None or available >= usd):
                pass
            elif not asked or (self.reachable and self._worth_waiting(usd, give_up)):
                if asked:
                    await asyncio.sleep(min(CONTENDED, self.refresh))
                asked = True
                await self._more(usd=usd if available is None else usd - min(available, usd))
                continue
            elif not self.reachable and self.fail_open:
                pass  # spent now, reported once the control plane answers
            elif not in_force:
                raise self._unreachable()
            else:
                raise QuotaExceeded(
                    self.tenant,
                    "usd",
                    f"tenant {self.tenant!r}: the USD quota left does not cover this model "
                    f"call's worst case ({usd} USD)",
                    retry_after=_until_window_end(self.policy),
                )
            wait = max(
                self.requests.wait_for(1) if self.requests is not None else 0.0,
                self.tokens.wait_for(tokens) if self.tokens is not None else 0.0,
            )
            if wait == 0:
                break
            self.demand.throttled = True
            if not math.isfinite(wait) and self.reachable and self._clock() + CONTENDED < give_up:
                # No share of the rate at all yet: ask for one.
                await asyncio.sleep(CONTENDED if asked else 0)
                asked = True
                await self._more()
                continue
            if not math.isfinite(wait) or self._clock() + wait > give_up:
                raise QuotaExceeded(
                    self.tenant,
                    "tokens_per_minute" if self.tokens is not None else "requests_per_minute",
                    f"tenant {self.tenant!r} is at its token or request rate",
                    retry_after=wait if math.isfinite(wait) else self.refresh,
                )
            await asyncio.sleep(wait)
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        self.usd_reserved += usd
        return Reservation(self, usd, tokens)

    def settle(self, reservation: Reservation, usd: Decimal, tokens: int) -> None:
        self.usd_reserved -= reservation.usd
        self.usd_spent += usd
        self.demand.usd_spent += usd
        if self.tokens is not None:
            self.tokens.give_back(reservation.tokens - tokens)
        self.touch()

    # -- renewal ---------------------------------------------------------------------

    def _first_slice(self) -> Decimal:
        """What to ask for before any call's cost is known: a small part of the budget."""
        budgets = [
            Decimal(getattr(self.policy, f))
            for f in ("usd_per_day", "usd_per_month")
            if self.policy.HasField(f)
        ]
        return min(budgets, default=Decimal(0)) / FIRST_SLICE_PARTS

    def ask(self) -> quota_pb2.AcquireLeaseRequest:
        """The renewal request: what is spent, in use, needed and wanted."""
        policy = self.policy
        demand = self.demand
        needs_usd = max(self.waiting_usd, default=Decimal(0))
        request = quota_pb2.AcquireLeaseRequest(
            lease_id=self.lease_id, spent_usd=str(self.usd_spent)
        )
        request.in_use.usd = str(self.usd_reserved)
        request.in_use.run_slots = self.slots_used
        # Beyond its fair share a lease is granted only what the neediest waiting call
        # needs; the rest of what waits it wants.
        request.needs.usd = str(needs_usd)
        request.needs.run_slots = self.waiting_slots
        # USD: twice what the last interval spent, at least a few of the largest calls,
        # more when something did not fit; nothing more when idle.
        if self.usd_held is not None:
            want = max(2 * demand.usd_spent, 4 * self.largest_call or self._first_slice())
            if demand.short:
                want = max(want, 2 * self.usd_held)
            wanted = self.usd_reserved + sum(self.waiting_usd, Decimal(0))
            request.wants.usd = str(wanted + (want if demand.active else Decimal(0)))
        # Rates: all of the limit while this executor is busy with the tenant (the control
        # plane shares it fairly among those that want it); none while idle.
        busy = demand.active or demand.throttled or self.slots_used > 0
        request.wants.tokens_per_minute = policy.tokens_per_minute if busy else 0
        request.wants.requests_per_minute = policy.requests_per_minute if busy else 0
        headroom = max(1, self.slots_used // 4) if busy else 0
        running = self.slots_used + self.waiting_slots
        request.wants.run_slots = min(running + headroom, max(policy.max_concurrent_runs, running))
        return request

    def unreachable(self, retry_in: float) -> None:
        """A renewal failed. Past its expiry a lease that fails open admits at the
        policy's rates."""
        self.reachable = False
        self.refresh_at = self._clock() + retry_in
        if not self.in_force() and self.fail_open:
            policy = self.policy
            if self.tokens is not None and policy.HasField("tokens_per_minute"):
                self.tokens.set_rate(policy.tokens_per_minute)
            if self.requests is not None and policy.HasField("requests_per_minute"):
                self.requests.set_rate(policy.requests_per_minute)

    def granted(
        self, response: quota_pb2.AcquireLeaseResponse, reported: Decimal, now: datetime
    ) -> None:
        granted = response.granted
        self.lease_id = response.lease_id
        self.usd_spent -= reported
        self.usd_held = Decimal(granted.usd) if granted.HasField("usd") else None
        self.free_usd = Decimal(response.free.usd or 0)
        self.elsewhere_usd = Decimal(response.held_elsewhere.usd or 0)
        self.tokens = _bucket(self.tokens, granted, "tokens_per_minute", self._clock)
        self.requests = _bucket(self.requests, granted, "requests_per_minute", self._clock)
        self.slots_held = granted.run_slots if granted.HasField("run_slots") else None
        self.refresh = max(response.refresh_interval.ToTimedelta().total_seconds(), 0.05)
        left = (response.expire_time.ToDatetime(UTC) - now).total_seconds()
        self.expires_at = self._clock() + left
        self.refresh_at = self._clock() + self.refresh
        self.reachable = True
        self.demand = _Demand()


def _bucket(
    bucket: TokenBucket | None,
    granted: quota_pb2.QuotaAmounts,
    field: str,
    clock: Callable[[], float],
) -> TokenBucket | None:
    if not granted.HasField(field):  # type: ignore[arg-type]
        return None
    rate: int = getattr(granted, field)
    if bucket is None:
        return TokenBucket(rate, clock=clock)
    bucket.set_rate(rate)
    return bucket


NO_RESERVATION = Reservation(None, Decimal(0), 0)


class Quotas:
    """This executor's leases, one per tenant with limits, and their renewal."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        watcher: ConfigWatcher,
        *,
        api_key: str,
        executor: str,
        rpc_timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = quota_pb2_grpc.QuotaServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._watcher = watcher
        self.executor = executor
        self._timeout = rpc_timeout
        self._clock = clock
        self.leases: dict[str, TenantLease] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    def usd_limited(self, tenant: str) -> bool:
        """The tenant's lease limits its spend in USD (so a model call needs a worst
        case)."""
        lease = self.lease(tenant)
        return lease is not None and lease.usd_held is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="quota-renewal")

    async def aclose(self) -> None:
        """Stop renewing; report what was spent and give the leases back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        leases, self.leases = list(self.leases.values()), {}
        await asyncio.gather(
            *self._releasing, *(self._release(lease) for lease in leases), return_exceptions=True
        )

    def _policy(self, tenant: str) -> tenant_pb2.QuotaPolicy | None:
        config = self._watcher.current
        return (
            config.get(tenant_pb2.QuotaPolicy, f"tenants/{tenant}/quotaPolicy") if config else None
        )

    def lease(self, tenant: str) -> TenantLease | None:
        """The tenant's lease, made on first use; None when its policy sets no limit."""
        policy = self._policy(tenant)
        lease = self.leases.get(tenant)
        if policy is None or not _limited(policy):
            if lease is not None and lease.slots_used == 0 and lease.usd_reserved == 0:
                self.leases.pop(tenant, None)
                self._release_later(lease)
            return None
        if lease is None:
            lease = self.leases[tenant] = TenantLease(tenant, policy, self._renew, self._clock)
        lease.policy = policy
        return lease

    async def take_slot(self, tenant: str, *, budget: bool = True) -> RunSlot:
        lease = self.lease(tenant)
        return UNLIMITED_SLOT if lease is None else await lease.take_slot(budget=budget)

    async def check_budget(self, tenant: str) -> None:
        lease = self.lease(tenant)
        if lease is not None:
            await lease.check_budget()

    def _renew(self, lease: TenantLease) -> asyncio.Future[None]:
        """Renew ``lease`` now; it must have no renewal in flight."""
        assert lease.renewing is None
        lease.renewals += 1
        lease.renewing = asyncio.ensure_future(self._acquire(lease))
        return lease.renewing

    async def _acquire(self, lease: TenantLease) -> None:
        try:
            request = lease.ask()
            request.tenant = f"tenants/{lease.tenant}"
            request.executor = self.executor
            reported = lease.usd_spent
            try:
                response = await self._stub.AcquireLease(
                    request, metadata=self._metadata, timeout=self._timeout
                )
            except grpc.aio.AioRpcError as e:
                if lease.reachable:
                    log.warning(
                        "quota lease renewal failed",
                        extra={
                            "tenant": lease.tenant,
                            "code": e.code().name,
                            "detail": e.details(),
                        },
                    )
                lease.unreachable(min(lease.refresh, 1.0))
                return
            lease.granted(response, reported, datetime.now(UTC))
        finally:
            lease.renewing = None

    def _release_later(self, lease: TenantLease) -> None:
        task = asyncio.get_running_loop().create_task(self._release(lease))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, lease: TenantLease) -> None:
        await lease._settled()
        if not lease.lease_id:
            return
        request = quota_pb2.ReleaseLeaseRequest(
            tenant=f"tenants/{lease.tenant}",
            lease_id=lease.lease_id,
            spent_usd=str(lease.usd_spent),
        )
        try:
            await self._stub.ReleaseLease(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as e:
            log.warning(
                "quota lease release failed",
                extra={"tenant": lease.tenant, "code": e.code().name},
            )

    async def _renew_forever(self) -> None:
        while True:
            now = self._clock()
            for tenant, lease in list(self.leases.items()):
                if lease.idle() and lease.renewing is None:
                    del self.leases[tenant]
                    self._release_later(lease)
                elif lease.refresh_at <= now and lease.renewing is None:
                    self._renew(lease)
            due = [lease.refresh_at for lease in self.leases.values()]
            await wait_event(self._wake, max(min(due, default=1.0) - self._clock(), 0.05))
            self._wake.clear()
