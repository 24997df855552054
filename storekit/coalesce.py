"""Repeats of the same record, coalesced: of the events with one key, one per window
gets through, telling how many were left out since the last one that did."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

MAX_TRACKED = 10_000


class Coalescer:
    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._last: dict[Hashable, tuple[float, int]] = {}

    def admit(self, key: Hashable) -> int | None:
        """None: a repeat within the window (counted); otherwise the repeats left out
        since the last one admitted."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._window:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) >= MAX_TRACKED:
            self._last.clear()
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0
