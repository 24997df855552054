"""How much of a tenant's limits one lease may hold: the rules, apart from storage.

Each kind of limit is a pool: a USD budget is its allowance less what was reported spent
in its window; a per-minute rate and the concurrent-run slots are their limits. Leases
hold parts of the pools. A lease is granted what it asks, up to its fair share (max-min
fair over the live leases' wants, as Doorman shares capacity) and never past what the
other leases leave free. What a lease has in use (USD reserved by calls in flight, slots
of running runs) it keeps, and what an executor needs for the call or run waiting on it
is granted beyond its fair share when it remains: a lease of the last cents of a budget
is worth more to a call that fits in it than to nobody. A call that waits and was not
granted what it needs is owed first what frees up, before leases that waited less: else
executors each holding a remnant too small for their calls would wait on each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

NANO_PER_USD = 10**9
"""USD amounts are integers of 10^-9 USD (spending is rounded up to them, grants down)."""

Amounts = Mapping[str, int]
"""An amount per limit of the policy (``usd_per_day``, ``tokens_per_minute``, …; USD in
nano-USD). A limit missing from it is 0."""


@dataclass(frozen=True)
class Holder:
    """Another lease of the tenant: what it holds, counted against each limit, and,
    while it is live, what it wants."""

    held: Amounts
    wants: Amounts
    live: bool


@dataclass(frozen=True)
class Ask:
    """What one lease asks for: it keeps ``in_use``, is granted ``needs`` when that
    remains, and up to ``wants`` within its fair share."""

    in_use: Amounts
    needs: Amounts
    wants: Amounts


def water_fill(capacity: int, wants: Sequence[int]) -> list[int]:
    """Max-min fair shares of ``capacity``: nobody gets more than it wants, and what one
    does not want is shared among the others equally."""
    shares = [0] * len(wants)
    left = max(capacity, 0)
    pending = sorted(range(len(wants)), key=lambda i: wants[i])
    while pending and left > 0:
        equal = left // len(pending)
        i = pending[0]
        if wants[i] <= equal:
            shares[i] = wants[i]
            left -= wants[i]
            pending.pop(0)
            continue
        # Everyone left wants more than an equal part: each gets that, and the remainder
        # goes one unit each to the first.
        extra = left - equal * len(pending)
        for n, j in enumerate(pending):
            shares[j] = equal + (1 if n < extra else 0)
        break
    return shares


def grant(
    pools: Mapping[str, int],
    ask: Ask,
    others: Sequence[Holder],
    ahead: Amounts | None = None,
) -> dict[str, int]:
    """What the lease may hold of each limit in ``pools`` (the limit's capacity now: its
    allowance, less what was spent for a budget). ``ahead``: what other leases have
    waited for longer and are owed first of what is free."""
    granted: dict[str, int] = {}
    for limit, pool in pools.items():
        unheld = pool - sum(o.held.get(limit, 0) for o in others)
        free = unheld - (ahead or {}).get(limit, 0)
        wants = ask.wants.get(limit, 0)
        live_wants = [o.wants.get(limit, 0) for o in others if o.live]
        fair = water_fill(pool, [wants, *live_wants])[0]
        amount = min(wants, max(fair, ask.needs.get(limit, 0)), free)
        granted[limit] = max(amount, min(ask.in_use.get(limit, 0), unheld), 0)
    return granted


@dataclass(frozen=True)
class Windows:
    """The USD budgets' windows at one moment: the UTC day and the UTC month."""

    day: str
    month: str
    day_end: datetime
    month_end: datetime

    @classmethod
    def at(cls, now: datetime) -> Windows:
        today = now.astimezone(UTC).date()
        first_next_month = (
            date(today.year + 1, 1, 1)
            if today.month == 12
            else date(today.year, today.month + 1, 1)
        )
        return cls(
            today.isoformat(),
            today.isoformat()[:7],
            datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC),
            datetime.combine(first_next_month, datetime.min.time(), UTC),
        )
