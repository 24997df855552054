"""ApprovalService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.context import principal
from controlplane.approvals.service import (
    APPROVE,
    APPROVED,
    DENIED,
    DENY,
    EXPIRED,
    MARK_DONE,
    MARK_FAILED,
    PENDING,
    RESOLVED,
    RETRY,
    TOOL_CALL,
    UNKNOWN_OUTCOME,
    Approvals,
    Filing,
    approval_name,
)
from controlplane.errors import InvalidArgument
from controlplane.store.approvals import ApprovalRow
from pilothouse import wellknown
from pilothouse.v1 import approval_pb2 as pb
from pilothouse.v1 import approval_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]
STATES = {
    PENDING: pb.APPROVAL_STATE_PENDING,
    APPROVED: pb.APPROVAL_STATE_APPROVED,
    DENIED: pb.APPROVAL_STATE_DENIED,
    EXPIRED: pb.APPROVAL_STATE_EXPIRED,
    RESOLVED: pb.APPROVAL_STATE_RESOLVED,
}
KINDS = {TOOL_CALL: pb.APPROVAL_KIND_TOOL_CALL, UNKNOWN_OUTCOME: pb.APPROVAL_KIND_UNKNOWN_OUTCOME}
DECISIONS = {
    "": pb.DECISION_UNSPECIFIED,
    APPROVE: pb.DECISION_APPROVE,
    DENY: pb.DECISION_DENY,
    RETRY: pb.DECISION_RETRY,
    MARK_FAILED: pb.DECISION_MARK_FAILED,
    MARK_DONE: pb.DECISION_MARK_DONE,
}


def _to_proto(row: ApprovalRow) -> pb.Approval:
    m = pb.Approval(
        name=approval_name(row),
        run=f"tenants/{row.tenant}/runs/{row.run}",
        agent=row.agent,
        step=row.step,
        call_index=row.call_index,
        tool=row.tool,
        arguments=row.arguments,
        reason=row.reason,
        state=STATES[row.state],
        decided_by=row.decided_by,
        comment=row.comment,
        decision_sequence=row.decision_seq or 0,
        kind=KINDS[row.kind],
        decision=DECISIONS[row.decision],
        result=row.result,
        attempt=row.attempt,
    )
    m.create_time.FromDatetime(row.create_time)
    if row.decide_time is not None:
        m.decide_time.FromDatetime(row.decide_time)
    m.expire_time.FromDatetime(row.expire_time)
    return m


class ApprovalServicer(approval_pb2_grpc.ApprovalServiceServicer):
    def __init__(self, approvals: Approvals) -> None:
        self._approvals = approvals

    async def CreateApproval(
        self, request: pb.CreateApprovalRequest, context: Ctx
    ) -> pb.CreateApprovalResponse:
        a = request.approval
        expires = (
            wellknown.timestamp(a.expire_time, "approval.expire_time")
            if a.HasField("expire_time")
            else None
        )
        kind = {v: k for k, v in KINDS.items()}.get(a.kind or pb.APPROVAL_KIND_TOOL_CALL)
        if kind is None:
            raise InvalidArgument.of("approval.kind", f"unknown kind {a.kind}")
        filing = Filing(
            a.run,
            a.agent,
            a.step,
            a.call_index,
            a.tool,
            a.arguments,
            a.reason,
            expires,
            kind,
            a.attempt,
        )
        created, new = await self._approvals.create(principal(), request.parent, filing)
        return pb.CreateApprovalResponse(approval=_to_proto(created), created=new)

    async def GetApproval(
        self, request: pb.GetApprovalRequest, context: Ctx
    ) -> pb.GetApprovalResponse:
        return pb.GetApprovalResponse(
            approval=_to_proto(await self._approvals.get(principal(), request.name))
        )

    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: Ctx
    ) -> pb.ListApprovalsResponse:
        state = {v: k for k, v in STATES.items()}.get(request.state)
        if request.state and state is None:
            raise InvalidArgument.of("state", f"unknown state {request.state}")
        rows, token = await self._approvals.list_page(
            principal(), request.parent, request.page_size, request.page_token, state
        )
        return pb.ListApprovalsResponse(
            approvals=[_to_proto(r) for r in rows], next_page_token=token
        )

    async def DecideApproval(
        self, request: pb.DecideApprovalRequest, context: Ctx
    ) -> pb.DecideApprovalResponse:
        decision = {v: k for k, v in DECISIONS.items()}.get(request.decision, "")
        if not decision:
            raise InvalidArgument.of(
                "decision",
                "is required: DECISION_APPROVE or DECISION_DENY for a call waiting to run; "
                "DECISION_RETRY, DECISION_MARK_FAILED or DECISION_MARK_DONE for a call "
                "whose outcome is unknown",
            )
        row = await self._approvals.decide(
            principal(), request.name, decision, request.comment, request.result
        )
        return pb.DecideApprovalResponse(approval=_to_proto(row))

    async def WatchDecisions(
        self, request: pb.WatchDecisionsRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchDecisionsResponse]:
        async for row in self._approvals.watch(principal(), request.after_sequence):
            yield pb.WatchDecisionsResponse(approval=_to_proto(row))
