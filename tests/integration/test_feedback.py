"""FeedbackService over gRPC: clients record what people thought of runs, once per
feedback id; operators list it by tenant or run, newest first; bad input names its
field."""

from __future__ import annotations

import grpc
import pytest

from pilothouse.v1 import api_key_pb2, feedback_pb2, feedback_pb2_grpc
from tests import helpers as h
from tests.conftest import Live

Code = grpc.StatusCode
RUN = "00000000-0000-0000-0000-00000000000a"


def stub(live: Live) -> feedback_pb2_grpc.FeedbackServiceStub:
    return feedback_pb2_grpc.FeedbackServiceStub(live.channel)


async def test_feedback_is_recorded_once_and_listed(live: Live) -> None:
    tenant = await live.new_tenant("f")
    client = live.md(await live.new_key(api_key_pb2.ROLE_CLIENT, tenant))
    run = f"tenants/{tenant}/runs/{RUN}"
    first = await stub(live).RecordFeedback(
        feedback_pb2.RecordFeedbackRequest(
            run=run, score=0.25, comment="wrong order number", feedback_id="ticket-9"
        ),
        metadata=client,
    )
    assert first.created and first.feedback.name == f"tenants/{tenant}/feedback/ticket-9"
    assert first.feedback.actor.startswith("apiKeys/") and first.feedback.score == 0.25
    again = await stub(live).RecordFeedback(
        feedback_pb2.RecordFeedbackRequest(run=run, score=1.0, feedback_id="ticket-9"),
        metadata=client,
    )
    assert not again.created and again.feedback == first.feedback
    for score in (0.5, 1.0, 0.0):
        await stub(live).RecordFeedback(
            feedback_pb2.RecordFeedbackRequest(run=f"tenants/{tenant}/runs/other", score=score),
            metadata=client,
        )

    seen: list[feedback_pb2.Feedback] = []
    request = feedback_pb2.ListFeedbackRequest(parent=f"tenants/{tenant}", page_size=3)
    while True:
        page = await stub(live).ListFeedback(request, metadata=live.md())
        seen += page.feedback
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert [f.score for f in seen] == [0.0, 1.0, 0.5, 0.25], "newest first"
    one = await stub(live).ListFeedback(
        feedback_pb2.ListFeedbackRequest(parent=run), metadata=live.md()
    )
    assert [f.name for f in one.feedback] == [first.feedback.name]
    # Clients record; reading is for operators and admins.
    await h.fails(
        stub(live).ListFeedback(
            feedback_pb2.ListFeedbackRequest(parent=f"tenants/{tenant}"), metadata=client
        ),
        Code.PERMISSION_DENIED,
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (feedback_pb2.RecordFeedbackRequest(run="runs/x", score=0.5), "run"),
        (feedback_pb2.RecordFeedbackRequest(run="tenants/{t}/runs/x", score=1.5), "score"),
        (feedback_pb2.RecordFeedbackRequest(run="tenants/{t}/runs/x", score=float("nan")), "score"),
        (
            feedback_pb2.RecordFeedbackRequest(run="tenants/{t}/runs/x", comment="x" * 4097),
            "comment",
        ),
        (
            feedback_pb2.RecordFeedbackRequest(run="tenants/{t}/runs/x", feedback_id="Not OK"),
            "feedback_id",
        ),
    ],
)
async def test_bad_feedback_is_refused_naming_the_field(
    live: Live, request_: feedback_pb2.RecordFeedbackRequest, field: str
) -> None:
    tenant = await live.new_tenant("f")
    request = feedback_pb2.RecordFeedbackRequest()
    request.CopyFrom(request_)
    request.run = request.run.replace("{t}", tenant)
    err = await h.fails(
        stub(live).RecordFeedback(request, metadata=live.md()), Code.INVALID_ARGUMENT
    )
    assert field in h.field_violations(err)
