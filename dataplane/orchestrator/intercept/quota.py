"""A model call's hold on its tenant's quota: the call's worst case is reserved from the
tenant's lease before it is made (waiting, up to the call's deadline, for room) and
settled at its actual cost after; a call that fails costs nothing. The tenant's quota is
held to a bound, not an estimate: a prompt has at most as many tokens as bytes."""

from __future__ import annotations

from decimal import Decimal

from dataplane.models.gateway import GatewayResult
from dataplane.orchestrator.intercept.chain import ModelInvocation, ModelNext
from dataplane.quota.leases import QuotaExceeded, Quotas
from dataplane.telemetry.otel import Tracing


class QuotaHold:
    def __init__(self, quotas: Quotas, tracing: Tracing) -> None:
        self._quotas = quotas
        self._tracing = tracing

    async def call_model(self, call: ModelInvocation, proceed: ModelNext) -> GatewayResult:
        lease = self._quotas.lease(call.tenant)
        if lease is None:  # its policy limits nothing
            return await proceed(call)
        try:
            reservation = await lease.reserve(
                call.worst_usd, call.token_bound, deadline=call.deadline
            )
        except QuotaExceeded as e:
            self._tracing.quota_refusals.add(
                1, {"pilothouse.quota.limit": e.limit, "pilothouse.tenant": call.tenant}
            )
            raise
        try:
            result = await proceed(call)
        except BaseException:
            reservation.settle(Decimal(0), 0)
            raise
        usage = result.result.usage
        reservation.settle(result.cost, usage.input_tokens + usage.output_tokens)
        return result
