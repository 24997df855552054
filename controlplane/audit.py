"""Recording changes in the audit log, in the transaction that makes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.auth.principal import Principal
from controlplane.store import audit as audit_store


async def record(
    conn: AsyncConnection,
    caller: Principal | None,
    action: str,
    resource: str,
    *,
    tenant: str | None,
    details: dict[str, Any] | None = None,
    time: datetime | None = None,
) -> None:
    """Append one audit event to its tenant's chain; ``caller`` None means the control
    plane itself."""
    await audit_store.append_one(
        conn,
        audit_store.NewAudit(
            time or datetime.now(UTC),
            tenant,
            caller.actor if caller else "system",
            action,
            resource,
            json.dumps(details or {}, sort_keys=True, default=str),
        ),
    )
