"""Circuit breakers, one per endpoint: after ``threshold`` failures in a row the endpoint
is skipped for ``cooldown`` seconds; then one trial call decides whether it closes again."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _State:
    failures: int = 0
    open_until: float = 0.0
    trial_in_flight: bool = False


@dataclass
class Breakers:
    threshold: int = 5
    cooldown: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)

    def allow(self, endpoint: str) -> bool:
        state = self._states.setdefault(endpoint, _State())
        if state.failures < self.threshold:
            return True
        if self.clock() < state.open_until or state.trial_in_flight:
            return False
        state.trial_in_flight = True  # half-open: one call finds out
        return True

    def success(self, endpoint: str) -> None:
        self._states[endpoint] = _State()

    def failure(self, endpoint: str) -> None:
        state = self._states.setdefault(endpoint, _State())
        state.failures += 1
        state.trial_in_flight = False
        if state.failures >= self.threshold:
            state.open_until = self.clock() + self.cooldown

    def is_open(self, endpoint: str) -> bool:
        state = self._states.get(endpoint)
        return state is not None and state.failures >= self.threshold
