"""Recording and listing feedback on runs."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

from controlplane.auth.principal import Principal
from controlplane.errors import InvalidArgument
from controlplane.registry import names
from controlplane.registry.pagination import decode_time_key, page_size, paginate, time_key
from controlplane.store import feedback as feedback_store
from controlplane.store.database import Database
from controlplane.store.feedback import FeedbackRow

MAX_COMMENT = 4096


class FeedbackLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self, caller: Principal, run: str, score: float, comment: str, feedback_id: str
    ) -> tuple[FeedbackRow, bool]:
        tenant, run_id = names.parse_run(run, "run")
        caller.require_tenant(tenant)
        if not math.isfinite(score) or not 0 <= score <= 1:
            raise InvalidArgument.of("score", "must be from 0 to 1")
        if len(comment) > MAX_COMMENT:
            raise InvalidArgument.of("comment", f"must be at most {MAX_COMMENT} characters")
        id_ = names.check_id(feedback_id, "feedback_id") if feedback_id else str(uuid.uuid4())
        row = FeedbackRow(tenant, id_, run_id, score, comment, caller.actor, datetime.now(UTC))
        async with self._db.transaction() as conn:
            stored = await feedback_store.insert(conn, row)
        return stored, stored == row

    async def list(
        self, caller: Principal, parent: str, size: int, token: str
    ) -> tuple[list[FeedbackRow], str]:
        run_id: str | None = None
        if "/runs/" in parent:
            tenant, run_id = names.parse_run(parent, "parent")
        else:
            tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        limit = page_size(size)
        collection = f"feedback:{parent}"
        async with self._db.snapshot() as conn:
            rows = await feedback_store.page(
                conn,
                tenant,
                run_id=run_id,
                before=decode_time_key(token, collection),
                limit=limit + 1,
            )
        return paginate(rows, limit, collection, lambda r: time_key(r.create_time, r.id))
