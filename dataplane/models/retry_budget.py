"""A retry budget: retries may add at most ``ratio`` to the calls made (plus a small
reserve), so that when a provider is failing the gateway does not multiply its load."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RetryBudget:
    ratio: float = 0.2
    """Retries allowed per call made, over time."""
    reserve_per_second: float = 10.0
    """Retries always allowed per second, so that low traffic can still retry."""
    clock: Callable[[], float] = time.monotonic
    _balance: float = field(default=0.0, init=False)
    _last: float = field(default=-1.0, init=False)

    def _refill(self) -> None:
        now = self.clock()
        if self._last >= 0:
            self._balance = min(
                self._balance + (now - self._last) * self.reserve_per_second,
                self.reserve_per_second + 1000 * self.ratio,
            )
        else:
            self._balance = self.reserve_per_second
        self._last = now

    def deposit(self) -> None:
        """A first attempt was made."""
        self._refill()
        self._balance += self.ratio

    def withdraw(self) -> bool:
        """May a retry be made now? Takes it from the budget if so."""
        self._refill()
        if self._balance >= 1:
            self._balance -= 1
            return True
        return False
