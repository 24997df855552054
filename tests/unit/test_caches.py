"""Caches that hold what tenants wrote are bounded by bytes, not only by count."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane.lru import LruCache
from controlplane.registry import kinds
from controlplane.registry.service import SpecCache
from controlplane.store.rows import ResourceRow


def test_an_lru_cache_keeps_within_its_bytes() -> None:
    cache: LruCache[str, bytes] = LruCache(100, max_bytes=1000, size=len)
    for i in range(10):
        cache.put(f"k{i}", b"x" * 300)
    assert cache.bytes <= 1000 and len(cache) == 3
    assert cache.get("k9") is not None and cache.get("k0") is None
    cache.put("huge", b"x" * 5000)  # heavier than the whole cache: not kept
    assert cache.get("huge") is None and cache.bytes <= 1000
    cache.put("k9", b"y")  # replacing an entry gives its weight back
    assert cache.bytes == 601
    cache.discard_where(lambda v: v == b"y")
    assert cache.bytes == 600


def test_the_spec_cache_holds_a_bounded_weight_of_large_specs() -> None:
    cache = SpecCache(max_bytes=1_000_000)
    now = datetime.now(UTC)
    for i in range(24):  # one large tool, updated again and again
        spec = '{"description": "%s", "kind": "builtin"}' % (str(i) * 60_000)
        cache.record(kinds.TOOL, ResourceRow("t", "Tool", "big", spec, f"e{i}", now, now))
    assert cache._specs.bytes <= 1_000_000
