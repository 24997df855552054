"""Refused calls, in the audit log: a key that did not authenticate, or that asked for
what its role or tenant does not allow.

A caller retrying a refused call in a loop would otherwise write a record per try: of
the refusals of one key, tenant and method, one record is written every ``WINDOW``
seconds, counting the ones left out since the last.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from controlplane.store import audit as audit_store
from controlplane.store.database import Database
from storekit.coalesce import Coalescer

log = logging.getLogger("pilothouse.controlplane.audit")

WINDOW = 10.0


class RefusalAudit:
    def __init__(self, db: Database, *, coalescer: Coalescer | None = None) -> None:
        self._db = db
        self._coalescer = coalescer or Coalescer(WINDOW)

    async def refused(
        self, *, actor: str, tenant: str | None, method: str, code: str, reason: str
    ) -> None:
        repeats = self._coalescer.admit((actor, tenant, method))
        if repeats is None:
            return
        details: dict[str, object] = {"method": method, "code": code, "reason": reason}
        if repeats:
            details["repeats_before"] = repeats
        record = audit_store.NewAudit(
            datetime.now(UTC),
            tenant,
            actor,
            "key.refused",
            method,
            json.dumps(details, sort_keys=True),
        )
        try:
            await self._db.write(lambda conn: audit_store.append(conn, [record]))
        except Exception:  # the refusal stands; only its record is lost, loudly
            log.exception("could not record a refused call", extra={"method": method})
