"""FeedbackService."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.context import principal
from controlplane.feedback.service import FeedbackLog
from controlplane.store.feedback import FeedbackRow
from pilothouse.v1 import feedback_pb2 as pb
from pilothouse.v1 import feedback_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


def feedback_to_proto(row: FeedbackRow) -> pb.Feedback:
    m = pb.Feedback(
        name=f"tenants/{row.tenant}/feedback/{row.id}",
        run=f"tenants/{row.tenant}/runs/{row.run_id}",
        score=row.score,
        comment=row.comment,
        actor=row.actor,
    )
    m.create_time.FromDatetime(row.create_time)
    return m


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, log: FeedbackLog) -> None:
        self._log = log

    async def RecordFeedback(
        self, request: pb.RecordFeedbackRequest, context: Ctx
    ) -> pb.RecordFeedbackResponse:
        row, created = await self._log.record(
            principal(), request.run, request.score, request.comment, request.feedback_id
        )
        return pb.RecordFeedbackResponse(feedback=feedback_to_proto(row), created=created)

    async def ListFeedback(
        self, request: pb.ListFeedbackRequest, context: Ctx
    ) -> pb.ListFeedbackResponse:
        rows, token = await self._log.list(
            principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListFeedbackResponse(
            feedback=[feedback_to_proto(r) for r in rows], next_page_token=token
        )
