"""AuditService: the audit log's chains, listed and verified."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.context import principal
from controlplane.audit_log import AuditLog
from pilothouse.auditchain import Record
from pilothouse.v1 import audit_pb2 as pb
from pilothouse.v1 import audit_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


def record_to_proto(r: Record) -> pb.AuditRecord:
    m = pb.AuditRecord(
        chain=r.chain,
        sequence=r.sequence,
        actor=r.actor,
        action=r.action,
        resource=r.resource,
        details=r.details,
        event_id=r.event_id,
        prev_hash=r.prev_hash,
        hash=r.hash,
    )
    m.time.FromDatetime(r.time)
    return m


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def ListAuditRecords(
        self, request: pb.ListAuditRecordsRequest, context: Ctx
    ) -> pb.ListAuditRecordsResponse:
        records, token = await self._log.list(
            principal(),
            request.parent,
            size=request.page_size,
            token=request.page_token,
            action_prefix=request.action_prefix,
            after_sequence=request.after_sequence,
        )
        return pb.ListAuditRecordsResponse(
            records=[record_to_proto(r) for r in records], next_page_token=token
        )

    async def VerifyAuditLog(
        self, request: pb.VerifyAuditLogRequest, context: Ctx
    ) -> pb.VerifyAuditLogResponse:
        verdict = await self._log.verify(principal(), request.parent)
        return pb.VerifyAuditLogResponse(
            intact=verdict.intact,
            verified=verdict.verified,
            head_sequence=verdict.head_sequence,
            head_hash=verdict.head_hash,
            broken_sequence=verdict.broken_at,
            problem=verdict.problem,
            pruned_through_sequence=verdict.after_sequence,
            pruned_through_hash=verdict.after_hash,
        )
