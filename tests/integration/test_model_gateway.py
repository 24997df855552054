"""The model gateway against a fake OpenAI-compatible server over real HTTP, and the
scripted provider."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from google.protobuf import any_pb2

from dataplane.config.snapshot import ExecutorConfig, parse
from dataplane.egress import EgressPolicy
from dataplane.http1 import Http1Transport
from dataplane.models.breaker import Breakers
from dataplane.models.credentials import Credential, Credentials
from dataplane.models.gateway import (
    GatewayResult,
    ModelGateway,
    NoModelAvailable,
    RetryPolicy,
    weighted_pick,
)
from dataplane.models.types import ChatMessage, ChatRequest, ProviderError, ToolSpec
from pilothouse.v1 import model_pb2
from tests import helpers as h
from tests.fakes.openai_server import Behaviour, FakeOpenAI

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.aclose()


@pytest.fixture
async def http() -> AsyncIterator[Http1Transport]:
    transport = Http1Transport()
    yield transport
    await transport.aclose()


def config(*models: model_pb2.Model, fallbacks: tuple[str, ...] = ()) -> ExecutorConfig:
    route = model_pb2.ModelRoute(
        name="tenants/t/modelRoutes/r",
        targets=[model_pb2.ModelRouteTarget(model=models[0].name, weight=1)],
        fallbacks=list(fallbacks),
    )
    packed: dict[str, list[any_pb2.Any]] = {}
    for message in (*models, route):
        a = any_pb2.Any()
        a.Pack(message)
        packed.setdefault(a.type_url, []).append(a)
    return parse("v", packed)


def openai_model(fake: FakeOpenAI, name: str = "gpt") -> model_pb2.Model:
    return h.openai_model(
        fake.base_url,
        name=f"tenants/t/models/{name}",
        provider_model="gpt-test",
        context_window=1000,
        credential="fake",
    )


REQUEST = ChatRequest(
    messages=(ChatMessage("system", "be brief"), ChatMessage("user", "where is my order?")),
    tools=(ToolSpec("lookup", "Look an order up", {"type": "object"}),),
    max_output_tokens=50,
)


FAKE_CREDENTIAL = Credential("fake", "env:FAKE_KEY", "sk-test", frozenset({"t"}))


def gateway(http: Http1Transport, **kwargs: object) -> ModelGateway:
    kwargs.setdefault("credentials", Credentials([FAKE_CREDENTIAL]))
    return ModelGateway(http, retry=FAST, **kwargs)  # type: ignore[arg-type]


async def ask(g: ModelGateway, fake: FakeOpenAI, pick_key: str) -> GatewayResult:
    """One call of the request over the route to the fake's one model."""
    return await g.complete(
        config(openai_model(fake)),
        "tenants/t/modelRoutes/r",
        REQUEST,
        deadline=await deadline(),
        pick_key=pick_key,
    )


async def deadline(seconds: float = 5) -> float:
    return asyncio.get_running_loop().time() + seconds


@pytest.mark.parametrize("stream", [True, False])
async def test_answers_tool_calls_usage_and_cost(
    fake: FakeOpenAI, http: Http1Transport, stream: bool
) -> None:
    fake.then(
        Behaviour(tool_calls=[{"name": "lookup", "arguments": {"order_id": "AB-1234"}}]),
        Behaviour(content="It ships tomorrow, with love from the fake."),
    )
    cfg = config(openai_model(fake))
    g = gateway(http, stream=stream)
    first = await g.complete(
        cfg, "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="run:1"
    )
    (call,) = first.result.message.tool_calls
    assert call.name == "lookup" and json.loads(call.arguments) == {"order_id": "AB-1234"}
    assert first.result.finish_reason == "tool_calls"
    second = await g.complete(
        cfg, "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="run:2"
    )
    assert second.result.message.content == "It ships tomorrow, with love from the fake."
    usage = second.result.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    expected = (
        Decimal(usage.input_tokens) * Decimal("0.15")
        + Decimal(usage.output_tokens) * Decimal("0.60")
    ) / Decimal(1_000_000)
    assert second.cost == expected
    sent = fake.requests[0]
    assert sent["model"] == "gpt-test" and sent["tools"][0]["function"]["name"] == "lookup"
    assert sent["stream"] is stream and fake.headers[0]["authorization"] == "Bearer sk-test"


async def test_a_compressed_reply_is_read_although_none_was_asked_for(
    fake: FakeOpenAI, http: Http1Transport
) -> None:
    fake.then(Behaviour(content="squeezed", gzip=True), Behaviour(content="plain"))
    g = gateway(http, stream=False)
    for expected in ("squeezed", "plain"):
        result = await ask(g, fake, "run:1")
        assert result.result.message.content == expected
    assert [h["accept-encoding"] for h in fake.headers] == ["identity", "identity"]


async def test_retries_what_may_succeed_and_honours_retry_after(
    fake: FakeOpenAI, http: Http1Transport
) -> None:
    fake.then(
        Behaviour(status=429, retry_after="0.2"), Behaviour(status=503), Behaviour(content="ok")
    )
    started = asyncio.get_running_loop().time()
    result = await ask(gateway(http), fake, "k")
    assert result.result.message.content == "ok" and result.attempts == 3
    assert asyncio.get_running_loop().time() - started >= 0.2


@pytest.mark.parametrize("data", ["{not json", "42", '["a list"]'])
async def test_a_malformed_stream_is_a_final_provider_error(
    fake: FakeOpenAI, http: Http1Transport, data: str
) -> None:
    fake.then(Behaviour(stream_data=[data, "[DONE]"]), Behaviour(content="never asked"))
    with pytest.raises(ProviderError) as info:
        await ask(gateway(http), fake, "k")
    assert "malformed stream chunk" in str(info.value) and not info.value.retryable
    assert len(fake.requests) == 1


async def test_final_errors_are_not_retried(fake: FakeOpenAI, http: Http1Transport) -> None:
    fake.then(Behaviour(status=400), Behaviour(content="never asked"))
    with pytest.raises(ProviderError) as info:
        await ask(gateway(http), fake, "k")
    assert info.value.status == 400 and not info.value.retryable
    assert len(fake.requests) == 1


async def test_falls_back_in_order_when_a_model_keeps_failing(
    fake: FakeOpenAI, http: Http1Transport
) -> None:
    backup = await FakeOpenAI().start()
    try:
        backup.then(Behaviour(content="from the fallback"))
        fake.then(*(Behaviour(status=500) for _ in range(3)))
        main, spare = openai_model(fake, "main"), openai_model(backup, "spare")
        result = await gateway(http).complete(
            config(main, spare, fallbacks=(spare.name,)),
            "tenants/t/modelRoutes/r",
            REQUEST,
            deadline=await deadline(),
            pick_key="k",
        )
        assert result.result.message.content == "from the fallback"
        assert result.model.name == spare.name and result.fallbacks_used == 1
        assert result.attempts == 4
    finally:
        await backup.aclose()


async def test_the_deadline_bounds_waiting_and_retrying(
    fake: FakeOpenAI, http: Http1Transport
) -> None:
    fake.default_delay = 1.0
    started = asyncio.get_running_loop().time()
    with pytest.raises((ProviderError, NoModelAvailable)):
        await gateway(http).complete(
            config(openai_model(fake)),
            "tenants/t/modelRoutes/r",
            REQUEST,
            deadline=await deadline(0.3),
            pick_key="k",
        )
    assert asyncio.get_running_loop().time() - started < 0.9


async def test_an_open_breaker_skips_the_endpoint(fake: FakeOpenAI, http: Http1Transport) -> None:
    breakers = Breakers(threshold=2, cooldown=60)
    g = gateway(http, breakers=breakers)
    cfg = config(openai_model(fake))
    fake.then(*(Behaviour(status=500) for _ in range(3)))
    with pytest.raises(NoModelAvailable):
        await g.complete(
            cfg, "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="k"
        )
    asked = len(fake.requests)
    with pytest.raises(NoModelAvailable):
        await g.complete(
            cfg, "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="k"
        )
    assert len(fake.requests) == asked, "an open breaker sends nothing"


async def test_scripted_rules(http: Http1Transport) -> None:
    model = model_pb2.Model(
        name="tenants/t/models/s",
        provider=model_pb2.MODEL_PROVIDER_SCRIPTED,
        input_price_per_million="1",
        output_price_per_million="2",
    )
    first = model.scripted.rules.add(on_step=1)
    first.tool_calls.add(tool="lookup").arguments.update({"order_id": "AB-1234"})
    model.scripted.rules.add(
        last_tool_result_contains="shipped", answer="Your order {{last_tool_result}}."
    )
    cfg = config(model)
    g = gateway(http)
    step1 = await g.complete(
        cfg, "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="k"
    )
    (call,) = step1.result.message.tool_calls
    assert call.name == "lookup" and json.loads(call.arguments) == {"order_id": "AB-1234"}
    step2 = await g.complete(
        cfg,
        "tenants/t/modelRoutes/r",
        ChatRequest(
            messages=(
                *REQUEST.messages,
                step1.result.message,
                ChatMessage("tool", "shipped", tool_call_id=call.id),
            ),
            step=2,
        ),
        deadline=await deadline(),
        pick_key="k",
    )
    assert step2.result.message.content == "Your order shipped."
    assert step2.cost > 0


def test_weighted_pick_is_stable_and_follows_weights() -> None:
    route = model_pb2.ModelRoute(
        targets=[
            model_pb2.ModelRouteTarget(model="a", weight=3),
            model_pb2.ModelRouteTarget(model="b", weight=1),
        ]
    )
    picks = Counter(weighted_pick(route, f"run-{i}") for i in range(4000))
    assert 0.7 < picks["a"] / 4000 < 0.8
    assert weighted_pick(route, "run-7") == weighted_pick(route, "run-7")


async def test_the_retry_budget_stops_retry_storms(fake: FakeOpenAI, http: Http1Transport) -> None:
    from dataplane.models.retry_budget import RetryBudget

    budget = RetryBudget(ratio=0.0, reserve_per_second=0.0)
    g = gateway(http, retry_budget=budget)
    fake.then(Behaviour(status=503), Behaviour(content="never asked"))
    with pytest.raises(NoModelAvailable):
        await ask(g, fake, "k")
    assert len(fake.requests) == 1, "no budget, no retry"


def test_retry_budget_accounting() -> None:
    from dataplane.models.retry_budget import RetryBudget

    now = [0.0]
    budget = RetryBudget(ratio=0.5, reserve_per_second=0.0, clock=lambda: now[0])
    for _ in range(4):
        budget.deposit()
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()


async def refused(g: ModelGateway, model: model_pb2.Model) -> ProviderError:
    """The call must fail at once, for good, without reaching any server."""
    with pytest.raises(ProviderError) as info:
        await g.complete(
            config(model),
            "tenants/t/modelRoutes/r",
            REQUEST,
            deadline=await deadline(),
            pick_key="k",
        )
    assert not info.value.retryable
    return info.value


async def test_a_credential_goes_only_where_its_operator_granted_it(
    fake: FakeOpenAI, http: Http1Transport
) -> None:
    fake.then(Behaviour(content="ok"))
    bound = Credential("bound", "env:B", "sk-bound", frozenset({"t"}), (fake.base_url.rstrip("/"),))
    elsewhere = Credential("elsewhere", "env:E", "sk-e", frozenset({"t"}), ("https://api.example",))
    other = Credential("other", "env:O", "sk-other", frozenset({"someone-else"}))
    g = gateway(http, credentials=Credentials([bound, elsewhere, other]))
    model = openai_model(fake)

    model.credential = "bound"
    await g.complete(
        config(model), "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="k"
    )
    assert fake.headers[-1]["authorization"] == "Bearer sk-bound"
    calls = len(fake.requests)

    model.credential = "elsewhere"
    assert "may not be sent to" in str(await refused(g, model))
    model.credential = "other"
    assert "not granted to tenant 't'" in str(await refused(g, model))
    model.credential = "missing"
    assert "not configured on this executor" in str(await refused(g, model))
    # A model stored before credentials existed names an environment variable: it is
    # never read, whatever it names.
    model.credential = ""
    model.api_key_env = "PILOTHOUSE_EXECUTOR_KEY"
    assert "api_key_env" in str(await refused(g, model))
    assert len(fake.requests) == calls


async def test_a_model_without_a_credential_sends_none(
    fake: FakeOpenAI, http: Http1Transport
) -> None:
    fake.then(Behaviour(content="ok"))
    model = openai_model(fake)
    model.credential = ""
    await gateway(http).complete(
        config(model), "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="k"
    )
    assert "authorization" not in fake.headers[-1]


async def test_egress_policy_keeps_model_calls_off_loopback(fake: FakeOpenAI) -> None:
    """The fake listens on loopback: without the operator's leave the call is refused
    before any connection, and for good."""
    guarded = Http1Transport(egress=EgressPolicy())
    try:
        error = await refused(gateway(guarded), openai_model(fake))
        assert "loopback" in str(error) and "--allow-egress" in str(error)
        assert fake.requests == []
    finally:
        await guarded.aclose()


DELTA = '{"id":"c1","choices":[{"index":0,"delta":{"content":"Your refund is appro"}}]}'
OVERLOADED = '{"error": {"message": "overloaded", "type": "server_error"}}'


@pytest.mark.parametrize(
    "raw",
    [
        f"data: {DELTA}\n\ndata: {OVERLOADED}\n\n",
        f'data: {DELTA}\n\nevent: error\ndata: {{"message": "upstream reset"}}\n\n',
        f"data: {DELTA}\n\n",  # cut: no finish_reason, no [DONE]
    ],
    ids=["error-chunk", "error-event", "cut-short"],
)
async def test_a_stream_that_fails_or_ends_early_is_an_error_not_an_answer(
    fake: FakeOpenAI, http: Http1Transport, raw: str
) -> None:
    fake.then(Behaviour(stream_raw=raw), Behaviour(content="Your refund is approved."))
    result = await ask(gateway(http), fake, "k")
    assert result.result.message.content == "Your refund is approved."
    assert result.attempts == 2, "the failed stream was retried, not taken as the answer"


async def test_a_stream_error_about_the_request_is_final(
    fake: FakeOpenAI, http: Http1Transport
) -> None:
    error = '{"error": {"message": "bad tool schema", "type": "invalid_request_error"}}'
    fake.then(Behaviour(stream_raw=f"data: {error}\n\n"), Behaviour(content="never asked"))
    with pytest.raises(ProviderError) as info:
        await ask(gateway(http), fake, "k")
    assert "bad tool schema" in str(info.value) and not info.value.retryable
    assert len(fake.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_reply_without_usage_is_charged_by_the_executors_estimate(
    fake: FakeOpenAI, http: Http1Transport, stream: bool
) -> None:
    """Not 0 tokens and $0: the executor counts the prompt and the reply itself, and
    says the count is its own."""
    fake.then(Behaviour(content="Your order ships on Monday.", usage=False))
    model = openai_model(fake)
    model.input_price_per_million = "1"
    model.output_price_per_million = "2"
    result = await gateway(http, stream=stream).complete(
        config(model), "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="k"
    )
    usage = result.result.usage
    assert usage.estimated and fake.requests[-1].get("stream", False) is stream
    # "be brief", "where is my order?" (each framed), the tool's schema; the reply's
    # 27 characters: about four characters a token.
    assert usage.input_tokens == (2 + 4) + (5 + 4) + 5 and usage.output_tokens == 7 + 4
    assert result.cost == (Decimal(20) * 1 + Decimal(11) * 2) / 1_000_000
    fake.then(Behaviour(content="ok"))
    reported = await gateway(http, stream=stream).complete(
        config(model), "tenants/t/modelRoutes/r", REQUEST, deadline=await deadline(), pick_key="k"
    )
    assert not reported.result.usage.estimated
