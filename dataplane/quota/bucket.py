"""A token bucket for a per-minute rate: it holds at most one minute's worth and fills
continuously. A take larger than the bucket may go through once the bucket is full,
leaving it in debt, so no single request is refused forever for being large."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.per_minute = max(per_minute, 0)
        self._level = float(self.per_minute)
        self._at = clock()

    def _fill(self) -> float:
        now = self._clock()
        self._level = min(
            self._level + (now - self._at) * self.per_minute / 60.0, float(self.per_minute)
        )
        self._at = now
        return self._level

    def set_rate(self, per_minute: int) -> None:
        """A new rate (a new share of the tenant's). A larger share comes with its
        capacity at once; a smaller one keeps what the bucket holds up to its size."""
        self._fill()
        per_minute = max(per_minute, 0)
        self._level = min(self._level + max(per_minute - self.per_minute, 0), float(per_minute))
        self.per_minute = per_minute

    def wait_for(self, amount: int) -> float:
        """Seconds until ``amount`` may be taken (0: now); infinite at a rate of 0."""
        if self.per_minute == 0:
            return 0.0 if amount <= 0 else math.inf
        need = min(float(amount), float(self.per_minute)) - self._fill()
        return max(need, 0.0) * 60.0 / self.per_minute

    def take(self, amount: int) -> bool:
        if self.wait_for(amount) > 0:
            return False
        self._level -= amount
        return True

    def give_back(self, amount: int) -> None:
        """Return what a take did not use (negative: charge what it used beyond)."""
        self._fill()
        self._level = min(self._level + amount, float(self.per_minute))
