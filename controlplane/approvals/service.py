"""Tool calls waiting for a person: filed by executors, decided by operators, streamed
back to executors in the order they were decided."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane import audit
from controlplane.auth.principal import Principal
from controlplane.errors import FailedPrecondition, InvalidArgument, NotFound, PreconditionViolation
from controlplane.registry import names
from controlplane.registry.pagination import decode_token, page_size, paginate
from controlplane.store import approvals as approval_store
from controlplane.store.approvals import ApprovalRow
from controlplane.store.database import Database
from controlplane.store.errors import DuplicateKey
from pilothouse import jsonschemas
from storekit.loop import every, wait_event

log = logging.getLogger("pilothouse.approvals")

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
RESOLVED = "resolved"
"""A person said what became of a call whose outcome was unknown (marked failed or done)."""
DEFAULT_EXPIRY = timedelta(hours=24)
MAX_RESULT_BYTES = 64 * 1024

TOOL_CALL, UNKNOWN_OUTCOME = "tool_call", "unknown_outcome"
APPROVE, DENY, RETRY, MARK_FAILED, MARK_DONE = (
    "approve",
    "deny",
    "retry",
    "mark_failed",
    "mark_done",
)
DECISIONS = {
    TOOL_CALL: {APPROVE: APPROVED, DENY: DENIED},
    UNKNOWN_OUTCOME: {RETRY: APPROVED, MARK_FAILED: RESOLVED, MARK_DONE: RESOLVED},
}
"""For each kind of request, its decisions and the state each leaves it in."""


@dataclass(frozen=True)
class Filing:
    """What an executor files for a call that waits for a person."""

    run: str
    agent: str
    step: int
    call_index: int
    tool: str
    arguments: str
    reason: str
    expire_time: datetime | None = None
    kind: str = TOOL_CALL
    attempt: int = 0
    """With ``UNKNOWN_OUTCOME``: the attempt of the call (from 1) in question."""


_RUN_ID = re.compile(r"^[0-9a-f-]{36}$")


class Approvals:
    def __init__(self, db: Database, *, poll_interval: float = 1.0) -> None:
        self._db = db
        self._poll = poll_interval
        self._decided = asyncio.Event()

    async def create(self, caller: Principal, parent: str, row: Filing) -> tuple[ApprovalRow, bool]:
        tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        run = row.run.split("/")
        if len(run) != 4 or run[:3] != ["tenants", tenant, "runs"] or not _RUN_ID.match(run[3]):
            raise InvalidArgument.of("approval.run", f"{row.run!r} is not a run of {parent}")
        if names.parse_child(row.agent, "agents", "approval.agent").tenant != tenant:
            raise InvalidArgument.of("approval.agent", f"{row.agent!r} is not an agent of {parent}")
        if row.step < 1 or row.call_index < 0:
            raise InvalidArgument.of(
                "approval.step", "step must be at least 1, call_index at least 0"
            )
        if row.kind not in DECISIONS:
            raise InvalidArgument.of("approval.kind", f"unknown kind {row.kind!r}")
        id_ = f"{run[3]}.{row.step}.{row.call_index}"
        if row.kind == UNKNOWN_OUTCOME:
            # A call may be retried and its outcome be unknown again: one request each.
            if row.attempt < 1:
                raise InvalidArgument.of(
                    "approval.attempt", "a call whose outcome is unknown names its attempt (>= 1)"
                )
            id_ += f".{row.attempt}"
        now = datetime.now(UTC)
        record = ApprovalRow(
            tenant,
            id_,
            run[3],
            row.agent,
            row.step,
            row.call_index,
            row.tool[:200],
            row.arguments,
            row.reason,
            PENDING,
            "",
            "",
            now,
            None,
            None,
            row.expire_time or now + DEFAULT_EXPIRY,
            row.kind,
            "",
            "",
            row.attempt if row.kind == UNKNOWN_OUTCOME else 0,
        )
        try:
            async with self._db.transaction() as conn:
                existing = await approval_store.get(conn, tenant, id_)
                if existing is not None:
                    return existing, False
                await approval_store.insert(conn, record)
                await audit.record(
                    conn,
                    caller,
                    "Approval.create",
                    _name(record),
                    tenant=tenant,
                    details={"tool": record.tool, "reason": record.reason},
                )
        except DuplicateKey:
            # Filed at the same moment by another executor: theirs stands.
            async with self._db.single_statement() as conn:
                existing = await approval_store.get(conn, tenant, id_)
            assert existing is not None
            return existing, False
        return record, True

    async def get(self, caller: Principal, name: str) -> ApprovalRow:
        tenant, id_ = _parse(name)
        caller.require_tenant(tenant)
        async with self._db.single_statement() as conn:
            row = await approval_store.get(conn, tenant, id_)
        if row is None:
            raise NotFound("Approval", name)
        return row

    async def list_page(
        self, caller: Principal, parent: str, size: int, token: str, state: str | None
    ) -> tuple[list[ApprovalRow], str]:
        tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        limit = page_size(size)
        collection = f"{parent}/approvals?{state or ''}"
        after = decode_token(token, collection)
        async with self._db.snapshot() as conn:
            rows = await approval_store.list_page(
                conn, tenant, after=after, limit=limit + 1, state=state
            )
        return paginate(rows, limit, collection, lambda r: r.id)

    async def decide(
        self, caller: Principal, name: str, decision: str, comment: str, result: str = ""
    ) -> ApprovalRow:
        """Record ``decision`` (one of its kind's ``DECISIONS``); ``result``: with
        ``MARK_DONE``, and only then, the call's result as JSON text."""
        tenant, id_ = _parse(name)
        caller.require_tenant(tenant)
        if await self._expire_if_due(tenant, id_):
            self._wake_watchers()
        async with self._db.transaction() as conn:
            row = await approval_store.get(conn, tenant, id_, for_update=True)
            if row is None:
                raise NotFound("Approval", name)
            allowed = DECISIONS[row.kind]
            if decision not in allowed:
                raise InvalidArgument.of(
                    "decision",
                    f"a request of kind {row.kind} is decided by one of: {', '.join(allowed)}",
                )
            _check_result(decision, result)
            if row.decision == decision and row.result == result:
                return row  # the same decision again: nothing changes
            if row.state != PENDING:
                raise FailedPrecondition(
                    f"{name} was already {row.state}; a decision cannot change",
                    [PreconditionViolation("ALREADY_DECIDED", name, row.state)],
                )
            state = allowed[decision]
            await approval_store.decide(
                conn,
                tenant,
                id_,
                state=state,
                decided_by=caller.actor,
                comment=comment[:2000],
                now=datetime.now(UTC),
                decision=decision,
                result=result,
            )
            details: dict[str, str] = {"comment": comment[:2000]}
            if row.kind != TOOL_CALL:
                details["decision"] = decision
            await audit.record(
                conn,
                caller,
                f"Approval.{state}",
                name,
                tenant=tenant,
                details=details,
            )
            decided = await approval_store.get(conn, tenant, id_)
        assert decided is not None
        self._wake_watchers()
        return decided

    async def expire_due(self) -> int:
        """Expire the pending requests past their time; how many. Safe on several
        replicas at once: a request expires once."""
        async with self._db.transaction() as conn:
            due = await approval_store.expired(conn, datetime.now(UTC))
            for row in due:
                await self._expire(conn, row)
        if due:
            self._wake_watchers()
        return len(due)

    async def expire_forever(self, interval: float = 1.0) -> None:
        await every(interval, self.expire_due, log, "expiring approval requests failed")

    async def _expire_if_due(self, tenant: str, id_: str) -> bool:
        """Expire one request if its time has passed (committed on its own, so a refused
        late decision still leaves the request expired)."""
        async with self._db.transaction() as conn:
            row = await approval_store.get(conn, tenant, id_, for_update=True)
            if row is None or row.state != PENDING or row.expire_time > datetime.now(UTC):
                return False
            await self._expire(conn, row)
        return True

    async def _expire(self, conn: AsyncConnection, row: ApprovalRow) -> ApprovalRow:
        await approval_store.decide(
            conn,
            row.tenant,
            row.id,
            state=EXPIRED,
            decided_by="system",
            comment="nobody decided in time",
            now=datetime.now(UTC),
        )
        await audit.record(conn, None, "Approval.expired", _name(row), tenant=row.tenant)
        expired = await approval_store.get(conn, row.tenant, row.id)
        assert expired is not None
        return expired

    def _wake_watchers(self) -> None:
        self._decided.set()
        self._decided = asyncio.Event()

    async def watch(self, caller: Principal, after: int) -> AsyncIterator[ApprovalRow]:
        """Decisions after ``after`` (of the caller's tenant, if it has one), then new ones
        as they are made (on this replica at once, on others within the poll interval)."""
        while True:
            waiter = self._decided
            async with self._db.single_statement() as conn:
                rows = await approval_store.decided_after(conn, after, tenant=caller.tenant)
            for row in rows:
                assert row.decision_seq is not None
                after = row.decision_seq
                yield row
            if not rows:
                await wait_event(waiter, self._poll)


def _check_result(decision: str, result: str) -> None:
    if decision != MARK_DONE:
        if result:
            raise InvalidArgument.of("result", "only DECISION_MARK_DONE carries a result")
        return
    if not result:
        raise InvalidArgument.of("result", "DECISION_MARK_DONE needs the call's result (JSON)")
    size = len(result.encode())
    if size > MAX_RESULT_BYTES:
        raise InvalidArgument.of("result", f"is {size} bytes; at most {MAX_RESULT_BYTES}")
    try:
        jsonschemas.parse_document(result)
    except ValueError as e:
        raise InvalidArgument.of("result", f"is not JSON: {e}") from None


def _name(row: ApprovalRow) -> str:
    return f"tenants/{row.tenant}/approvals/{row.id}"


def _parse(name: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "approvals" or not parts[3]:
        raise InvalidArgument.of(
            "name", f"{name!r} is not tenants/{{tenant}}/approvals/{{approval}}"
        )
    return names.check_id(parts[1], "name"), parts[3]


approval_name = _name
