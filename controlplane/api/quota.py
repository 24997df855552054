"""QuotaService: leases of tenants' limits, and balances."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import grpc

from controlplane.api import _convert
from controlplane.api._convert import FAILURE_MODES
from controlplane.api.context import principal
from controlplane.errors import InvalidArgument
from controlplane.quota.allocation import NANO_PER_USD
from controlplane.quota.service import USD_LIMITS, Granted, LeaseAsk, Quotas, Slice
from controlplane.registry import names
from pilothouse.v1 import quota_pb2 as pb
from pilothouse.v1 import quota_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


MAX_USD = Decimal(1_000_000_000)
"""More than any real spending or budget: what an executor reports or asks for is refused
past it (a figure such as 1E+999999999 would otherwise become an integer of a billion
digits)."""


def usd_to_nano(text: str, field: str) -> int:
    """A non-negative USD decimal string in nano-USD, rounded up (what is spent is never
    under-counted); empty is zero."""
    if not text:
        return 0
    value = _convert._decimal(text[:100], field)
    if len(text) > 100 or not 0 <= value <= MAX_USD:
        raise InvalidArgument.of(
            field, f"{text[:40]!r} is not a decimal number from 0 to {MAX_USD} (USD)"
        )
    return math.ceil(value * NANO_PER_USD)


def nano_to_usd(nano: int) -> str:
    return format(Decimal(nano).scaleb(-9).normalize(), "f")


def _slice(message: pb.QuotaAmounts, field: str) -> Slice:
    for name in ("tokens_per_minute", "requests_per_minute", "run_slots"):
        if getattr(message, name) < 0:
            raise InvalidArgument.of(f"{field}.{name}", "must not be negative")
    return Slice(
        usd_to_nano(message.usd, f"{field}.usd"),
        message.tokens_per_minute,
        message.requests_per_minute,
        message.run_slots,
    )


def _amounts(values: Slice, granted: Granted) -> pb.QuotaAmounts:
    """``values`` of the kinds the tenant's policy limits."""
    amounts = pb.QuotaAmounts()
    if "usd_nano" in granted.limited:
        amounts.usd = nano_to_usd(values.usd_nano)
    for kind in ("tokens_per_minute", "requests_per_minute", "run_slots"):
        if kind in granted.limited:
            setattr(amounts, kind, getattr(values, kind))
    return amounts


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, quotas: Quotas) -> None:
        self._quotas = quotas

    async def AcquireLease(
        self, request: pb.AcquireLeaseRequest, context: Ctx
    ) -> pb.AcquireLeaseResponse:
        tenant = names.parse_tenant(request.tenant, "tenant")
        if not request.executor:
            raise InvalidArgument.of("executor", "is required: the caller's xDS node id")
        ask = LeaseAsk(
            usd_to_nano(request.spent_usd, "spent_usd"),
            _slice(request.in_use, "in_use"),
            _slice(request.needs, "needs"),
            _slice(request.wants, "wants"),
        )
        granted = await self._quotas.acquire(
            principal(), tenant, request.executor, request.lease_id, ask
        )
        response = pb.AcquireLeaseResponse(
            lease_id=granted.lease_id,
            granted=_amounts(granted.held, granted),
            free=_amounts(granted.free, granted),
            held_elsewhere=_amounts(granted.held_elsewhere, granted),
            failure_mode=FAILURE_MODES[1][granted.failure_mode],
        )
        response.expire_time.FromDatetime(granted.expire_time)
        response.refresh_interval.FromTimedelta(granted.refresh_interval)
        return response

    async def ReleaseLease(
        self, request: pb.ReleaseLeaseRequest, context: Ctx
    ) -> pb.ReleaseLeaseResponse:
        tenant = names.parse_tenant(request.tenant, "tenant")
        if not request.lease_id:
            raise InvalidArgument.of("lease_id", "is required")
        await self._quotas.release(
            principal(), tenant, request.lease_id, usd_to_nano(request.spent_usd, "spent_usd")
        )
        return pb.ReleaseLeaseResponse()

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: Ctx
    ) -> pb.GetBalanceResponse:
        tenant = names.parse_tenant(request.tenant, "tenant")
        balances, leases, mode = await self._quotas.balance(principal(), tenant)
        response = pb.GetBalanceResponse(leases=leases, failure_mode=FAILURE_MODES[1][mode])
        for b in balances:
            usd = b.limit in USD_LIMITS
            text = nano_to_usd if usd else str
            item = response.balances.add(
                limit=b.limit,
                allowed=text(b.allowed),
                spent=text(b.spent) if b.spent is not None else "",
                held=text(b.held),
                remaining=text(b.remaining),
            )
            if b.window_end is not None:
                item.window_end_time.FromDatetime(b.window_end)
        return response
