"""ApprovalService over the wire: filing is idempotent, bad requests name their field."""

from __future__ import annotations

import grpc

from pilothouse.v1 import approval_pb2
from tests import helpers as h
from tests.conftest import Live


def filing(tenant: str, agent_tenant: str | None = None) -> approval_pb2.CreateApprovalRequest:
    return approval_pb2.CreateApprovalRequest(
        parent=f"tenants/{tenant}",
        approval=approval_pb2.Approval(
            run=f"tenants/{tenant}/runs/00000000-0000-0000-0000-0000000000aa",
            agent=f"tenants/{agent_tenant or tenant}/agents/helper",
            step=2,
            call_index=1,
            tool="refund",
            arguments='{"amount_usd": 5}',
        ),
    )


async def test_filing_twice_is_filing_once(live: Live) -> None:
    tenant = await live.new_tenant()
    first = await live.approvals.CreateApproval(filing(tenant), metadata=live.md())
    again = await live.approvals.CreateApproval(filing(tenant), metadata=live.md())
    assert first.created and not again.created
    assert again.approval.name == first.approval.name
    assert first.approval.name.endswith("00000000-0000-0000-0000-0000000000aa.2.1")
    assert first.approval.state == approval_pb2.APPROVAL_STATE_PENDING
    assert first.approval.expire_time.seconds > first.approval.create_time.seconds


async def test_bad_requests_name_the_field(live: Live) -> None:
    tenant = await live.new_tenant()
    other = await live.new_tenant()
    err = await h.fails(
        live.approvals.CreateApproval(filing(tenant, agent_tenant=other), metadata=live.md()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "approval.agent" in h.field_violations(err)
    filed = await live.approvals.CreateApproval(filing(tenant), metadata=live.md())
    err = await h.fails(
        live.approvals.DecideApproval(
            approval_pb2.DecideApprovalRequest(name=filed.approval.name), metadata=live.md()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "decision" in h.field_violations(err)
