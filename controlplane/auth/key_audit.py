"""Keys' use and refusal, in the audit log: a key that called a method (``key.used``),
and a key that did not authenticate or asked for what its role or tenant does not allow
(``key.refused``).

A record per call would drown the log (and a caller retrying a refused call in a loop
would fill it): of one key's calls of one method in one tenant, one use is recorded
every ``USE_WINDOW`` seconds and one refusal every ``REFUSAL_WINDOW``, each counting the
ones left out since the last.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from controlplane.store import audit as audit_store
from controlplane.store.database import Database
from storekit.coalesce import Coalescer

log = logging.getLogger("pilothouse.controlplane.audit")

USE_WINDOW = 3600.0
REFUSAL_WINDOW = 10.0


class KeyAudit:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._uses = Coalescer(USE_WINDOW)
        self._refusals = Coalescer(REFUSAL_WINDOW)

    async def used(self, *, actor: str, tenant: str | None, method: str) -> None:
        repeats = self._uses.admit((actor, tenant, method))
        if repeats is not None:
            await self._record("key.used", actor, tenant, method, {"calls_before": repeats})

    async def refused(
        self, *, actor: str, tenant: str | None, method: str, code: str, reason: str
    ) -> None:
        repeats = self._refusals.admit((actor, tenant, method))
        if repeats is not None:
            details = {"code": code, "reason": reason, "repeats_before": repeats}
            await self._record("key.refused", actor, tenant, method, details)

    async def _record(
        self, action: str, actor: str, tenant: str | None, method: str, details: dict[str, object]
    ) -> None:
        record = audit_store.NewAudit(
            datetime.now(UTC), tenant, actor, action, method, json.dumps(details, sort_keys=True)
        )
        try:
            await self._db.write(lambda conn: audit_store.append(conn, [record]))
        except Exception:  # the call's fate stands; only its record is lost, loudly
            log.exception("could not record a key's call", extra={"method": method})
