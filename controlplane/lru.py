"""A bounded mapping that forgets its least recently used entries, bounded by count and,
for values whose size varies with a tenant's input, by bytes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    def __init__(
        self,
        max_entries: int,
        *,
        max_bytes: int | None = None,
        size: Callable[[V], int] | None = None,
    ) -> None:
        """``max_bytes``: the most the values may weigh together, by ``size``. A value
        heavier than that alone is not kept."""
        self._max = max_entries
        self._max_bytes = max_bytes
        self._size = size or (lambda _value: 0)
        self._bytes = 0
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, key: K, value: V) -> None:
        self.discard(key)
        weight = self._size(value)
        if self._max_bytes is not None and weight > self._max_bytes:
            return
        self._entries[key] = value
        self._bytes += weight
        while len(self._entries) > self._max or (
            self._max_bytes is not None and self._bytes > self._max_bytes
        ):
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= self._size(dropped)

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def discard(self, key: K) -> None:
        if key in self._entries:
            self._bytes -= self._size(self._entries.pop(key))

    def discard_where(self, predicate: Callable[[V], bool]) -> None:
        for key in [k for k, v in self._entries.items() if predicate(v)]:
            self.discard(key)

    def __len__(self) -> int:
        return len(self._entries)
