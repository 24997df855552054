"""Delays before trying again: the configuration stream, the outbox relay and the
approval bridge reconnect with them."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Reconnection delays: exponential, capped, with full jitter."""

    initial: float = 0.2
    """Upper bound of the first wait, in seconds."""
    maximum: float = 30.0
    """Upper bound of any wait."""

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.maximum, self.initial * 2**attempt))
