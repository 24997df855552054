"""The quota rules apart from storage: fair shares, grants, windows, token buckets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.quota.allocation import Ask, Holder, Windows, grant, water_fill
from dataplane.quota.bucket import TokenBucket


@pytest.mark.parametrize(
    ("capacity", "wants", "shares"),
    [
        (100, [10, 200, 200], [10, 45, 45]),
        (100, [30, 30], [30, 30]),
        (10, [100, 100, 100], [4, 3, 3]),
        (0, [5, 5], [0, 0]),
        (100, [], []),
        (-5, [5], [0]),
    ],
)
def test_water_fill_is_max_min_fair(capacity: int, wants: list[int], shares: list[int]) -> None:
    assert water_fill(capacity, wants) == shares
    assert sum(shares) <= max(capacity, 0)


def _ask(in_use: int = 0, needs: int = 0, wants: int = 0, limit: str = "usd_per_day") -> Ask:
    return Ask({limit: in_use}, {limit: needs}, {limit: wants})


def test_grant_never_passes_what_others_leave_free() -> None:
    others = [Holder({"usd_per_day": 70}, {"usd_per_day": 70}, live=True)]
    assert grant({"usd_per_day": 100}, _ask(wants=100), others) == {"usd_per_day": 30}


def test_grant_is_the_fair_share_unless_more_is_needed() -> None:
    others = [Holder({"max_concurrent_runs": 0}, {"max_concurrent_runs": 10}, live=True)]
    pools = {"max_concurrent_runs": 10}
    fair = grant(pools, _ask(wants=10, limit="max_concurrent_runs"), others)
    assert fair == {"max_concurrent_runs": 5}
    needy = grant(pools, _ask(needs=7, wants=10, limit="max_concurrent_runs"), others)
    assert needy == {"max_concurrent_runs": 7}


def test_grant_keeps_what_is_in_use_even_past_the_fair_share() -> None:
    others = [Holder({"max_concurrent_runs": 2}, {"max_concurrent_runs": 10}, live=True)]
    kept = grant({"max_concurrent_runs": 10}, _ask(in_use=8, limit="max_concurrent_runs"), others)
    assert kept == {"max_concurrent_runs": 8}


def test_expired_leases_hold_nothing_and_want_nothing() -> None:
    expired = Holder({"tokens_per_minute": 0}, {"tokens_per_minute": 1000}, live=False)
    got = grant({"tokens_per_minute": 1000}, _ask(wants=1000, limit="tokens_per_minute"), [expired])
    assert got == {"tokens_per_minute": 1000}


def test_spent_budget_grants_nothing() -> None:
    assert grant({"usd_per_day": -5}, _ask(in_use=3, needs=3, wants=10), []) == {"usd_per_day": 0}


def test_windows_are_utc_day_and_month() -> None:
    w = Windows.at(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (w.day, w.month) == ("2026-12-31", "2026-12")
    assert w.day_end == datetime(2027, 1, 1, tzinfo=UTC) == w.month_end


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_fills_at_its_rate_up_to_a_minute() -> None:
    clock = Clock()
    bucket = TokenBucket(600, clock=clock)
    assert bucket.take(600)
    assert not bucket.take(1)
    assert bucket.wait_for(10) == pytest.approx(1.0)
    clock.now = 1.0
    assert bucket.take(10)
    clock.now = 1000.0
    assert bucket.take(600) and not bucket.take(1)


def test_token_bucket_lets_a_large_take_through_when_full_and_refunds() -> None:
    clock = Clock()
    bucket = TokenBucket(60, clock=clock)
    assert bucket.take(100)  # larger than the bucket: allowed once it is full, into debt
    assert bucket.wait_for(1) == pytest.approx(41.0)
    bucket.give_back(90)
    assert bucket.take(50)


def test_token_bucket_share_changes() -> None:
    clock = Clock()
    bucket = TokenBucket(0, clock=clock)
    assert bucket.wait_for(1) == float("inf")
    bucket.set_rate(120)
    assert bucket.take(120)  # a new share comes with its capacity
    bucket.set_rate(60)
    assert bucket.wait_for(1) == pytest.approx(1.0)
