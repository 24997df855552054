"""Recently verified API keys, so that most calls skip the database.

A key revoked through this process is forgotten at once; one revoked through another
replica keeps working here for at most ``ttl`` seconds. Expiry is checked on every use.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from controlplane.auth.principal import Principal
from controlplane.lru import LruCache


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    expire_time: datetime | None
    verified_at: float


class VerifiedKeys:
    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        # Keyed by a digest of the token: the cache never holds a secret.
        self._entries: LruCache[str, _Entry] = LruCache(max_entries)

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str) -> tuple[Principal, datetime | None] | None:
        if self._ttl <= 0:
            return None
        digest = self._digest(token)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self._clock() - entry.verified_at > self._ttl:
            self._entries.discard(digest)
            return None
        return entry.principal, entry.expire_time

    def put(self, token: str, principal: Principal, expire_time: datetime | None) -> None:
        if self._ttl > 0:
            self._entries.put(self._digest(token), _Entry(principal, expire_time, self._clock()))

    def forget_key(self, key_id: str) -> None:
        self._entries.discard_where(lambda e: e.principal.key_id == key_id)
