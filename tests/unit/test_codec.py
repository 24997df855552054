from datetime import timedelta
from decimal import Decimal

from controlplane.registry import codec
from controlplane.registry import resources as r


def test_round_trip_keeps_types() -> None:
    agent = r.Agent(
        prompt="tenants/a/prompts/p",
        tools=("tenants/a/tools/t",),
        default_budget=r.Budget(
            max_steps=3, max_usd=Decimal("0.10"), max_wall_time=timedelta(seconds=1.5)
        ),
        approval_policy=r.ApprovalPolicy(default_mode=r.ApprovalMode.ALWAYS),
        output_schema={"type": "object"},
    )
    back = codec.decode(r.Agent, codec.encode(agent))
    assert back == agent
    assert isinstance(back.default_budget.max_usd, Decimal)
    assert back.approval_policy.default_mode is r.ApprovalMode.ALWAYS


def test_decimals_stay_exact() -> None:
    model = r.Model(input_price_per_million=Decimal("0.1") + Decimal("0.2"))
    assert codec.decode(r.Model, codec.encode(model)).input_price_per_million == Decimal("0.3")


def test_missing_and_unknown_keys() -> None:
    assert codec.decode(r.Tool, {"description": "x", "added_later": 1}) == r.Tool(description="x")


def test_canonical_json_is_order_independent() -> None:
    a = r.Tool(input_schema={"a": 1, "b": 2})
    b = r.Tool(input_schema={"b": 2, "a": 1})
    assert codec.canonical_json(a) == codec.canonical_json(b)
    assert codec.content_hash(a) == codec.content_hash(b)
    assert codec.content_hash(a) != codec.content_hash(r.Tool(input_schema={"a": 1}))


def test_timestamps_round_trip() -> None:
    from datetime import UTC, datetime

    digest = r.ApiKeyDigest("client", "ab" * 32, datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert codec.decode(r.ApiKeyDigest, codec.encode(digest)) == digest
    assert codec.content_hash(digest) != codec.content_hash(r.ApiKeyDigest("client", "ab" * 32))
