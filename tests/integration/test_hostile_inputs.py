"""Inputs a tenant's key can send that once held an executor's event loop for seconds
(or crashed the run): while each is processed, the executor's health check still answers
promptly (within 1 s: a generous bound, not a timing target; the event loop's lag under
these inputs is measured in tests/bench/hostile_bench.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pilothouse.v1 import agent_pb2, api_key_pb2, eval_pb2, prompt_pb2, run_pb2
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.integration.test_agent_runs import Stage, calculator, deploy, run_to_end, stage

NESTED = "[" * 200_000 + "]" * 200_000
CALCULATION = "(((9**99)**99)**99)**3"
CRAFTED_PII = "x.a" * 43_690  # 128 KiB: 43 s of the e-mail pattern on Python's engine
CATASTROPHIC = r"(a+)+$"


@contextlib.asynccontextmanager
async def health_watch(channel: grpc.aio.Channel) -> AsyncIterator[list[float]]:
    """Checks the executor's health every 50 ms meanwhile; yields the latencies."""
    stub = health_pb2_grpc.HealthStub(channel)
    latencies: list[float] = []

    async def poll() -> None:
        while True:
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(poll())
    try:
        yield latencies
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def promptly(s: Stage, work: Callable[[], Awaitable[Any]]) -> Any:
    async with health_watch(s.channel) as latencies:
        result = await work()
        await asyncio.sleep(0.1)  # one more check after the work
    assert latencies and max(latencies) < 1.0, latencies
    return result


async def test_hostile_inputs_never_hold_the_executor(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    fake = await FakeOpenAI().start()
    try:
        tenant = await live.new_tenant("hostile")
        agent = h.agent(
            tenant, "support", ["calc"], guardrail_policy=agent_pb2.GuardrailPolicy(redact_pii=True)
        )
        await deploy(
            live,
            tenant,
            tools={"calc": calculator()},
            model=h.openai_model(fake.base_url, context_window=200_000, max_output_tokens=100_000),
            agent=agent,
        )
        async with stage(live, run_database_url, tmp_path) as s:
            await s.settled()
            key = await s.client_key(tenant)

            def ask(text: str) -> run_pb2.RunAgentRequest:
                return run_pb2.RunAgentRequest(
                    agent=f"tenants/{tenant}/agents/helper", input=text, variables={"customer": "A"}
                )

            # Tool arguments nested 200,000 deep: a tool error for the model, not a crash.
            fake.then(
                Behaviour(tool_calls=[{"name": "calc", "arguments": NESTED}]),
                Behaviour(content="done"),
            )
            events = await promptly(s, lambda: run_to_end(s, key, ask("nest")))
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            finished = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
            assert not finished[0].executed and "nests deeper" in finished[0].result

            # Big-integer arithmetic: refused before it is done.
            fake.then(
                Behaviour(tool_calls=[{"name": "calc", "arguments": {"expression": CALCULATION}}]),
                Behaviour(content="done"),
            )
            events = await promptly(s, lambda: run_to_end(s, key, ask("calculate")))
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED
            finished = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
            assert not finished[0].ok and "bits" in finished[0].result

            # 128 KiB of input crafted against the PII patterns.
            fake.then(Behaviour(content="ok"))
            events = await promptly(s, lambda: run_to_end(s, key, ask(CRAFTED_PII)))
            assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED

            # An eval case graded by a pattern that backtracks catastrophically on `re`.
            version = (
                await live.prompts.GetPrompt(
                    prompt_pb2.GetPromptRequest(name=f"tenants/{tenant}/prompts/support"),
                    metadata=live.md(),
                )
            ).prompt.labels["production"]
            operator = await s.client_key(tenant, role=api_key_pb2.ROLE_OPERATOR)
            fake.then(Behaviour(content="a" * 100_000 + "!"))
            case = eval_pb2.EvalCase(
                id="evil",
                input="say a lot",
                variables={"customer": "A"},
                expectations=[
                    eval_pb2.Expectation(grader=eval_pb2.GRADER_REGEX, value=CATASTROPHIC)
                ],
            )
            graded = await promptly(
                s,
                lambda: s.agents.RunEvalCase(
                    run_pb2.RunEvalCaseRequest(
                        agent=f"tenants/{tenant}/agents/helper",
                        prompt_version=version,
                        report_id="r1",
                        case=case,
                    ),
                    metadata=(("authorization", f"Bearer {operator}"),),
                ),
            )
            assert graded.result.grades[0].score == 0.0
    finally:
        await fake.aclose()
