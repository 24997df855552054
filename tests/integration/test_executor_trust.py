"""What one tenant's configuration can make an executor do, end to end: a real control
plane, a real executor and a fake OpenAI-compatible provider on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataplane.runstore.store import RunStore
from pilothouse.v1 import run_pb2, tool_pb2
from tests import helpers as h
from tests.conftest import Live
from tests.fakes.openai_server import Behaviour, FakeOpenAI
from tests.integration.test_agent_runs import run_to_end, stage, support_agent


def ask(tenant: str) -> run_pb2.RunAgentRequest:
    return run_pb2.RunAgentRequest(
        agent=f"tenants/{tenant}/agents/helper", input="hello", variables={"customer": "Ada"}
    )


def stopped(events: list[run_pb2.RunEvent]) -> run_pb2.RunStopped:
    return events[-1].run_stopped


async def test_a_credential_reaches_only_the_tenants_granted_it(
    live: Live, run_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = await FakeOpenAI().start()
    try:
        fake.then(*[Behaviour(content="hi")] * 4)
        model = h.openai_model(fake.base_url, credential="acme-key")
        granted = await support_agent(live, model=model)
        other = await support_agent(
            live, model=h.openai_model(fake.base_url, credential="acme-key")
        )
        monkeypatch.setenv("ACME_SECRET", "sk-acme-secret")
        async with stage(
            live,
            run_database_url,
            tmp_path,
            provider_credentials=(f"acme-key=ACME_SECRET:{granted}",),
        ) as s:
            await s.settled()
            ok = await run_to_end(s, await s.client_key(granted), ask(granted))
            assert stopped(ok).reason == run_pb2.STOP_REASON_COMPLETED, stopped(ok)
            assert fake.headers[-1]["authorization"] == "Bearer sk-acme-secret"
            calls = len(fake.requests)

            refused = await run_to_end(s, await s.client_key(other), ask(other))
            assert stopped(refused).reason != run_pb2.STOP_REASON_COMPLETED
            assert "not granted to tenant" in stopped(refused).detail
            assert "sk-acme-secret" not in str(refused)
            assert len(fake.requests) == calls
    finally:
        await fake.aclose()


async def test_tools_cannot_reach_the_executors_own_port(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    """Loopback is allowed for the fakes; the executor's own port still is not."""
    async with stage(live, run_database_url, tmp_path) as s:
        port = int(s.executor.address.rsplit(":", 1)[1])
        tool = tool_pb2.Tool(
            description="Posts to an address",
            kind=tool_pb2.TOOL_KIND_HTTP,
            endpoint=f"http://127.0.0.1:{port}/pilothouse.v1.AgentService/ListRuns",
        )
        tool.input_schema.update({"type": "object"})
        model = h.model()
        model.scripted.rules.add(on_step=1).tool_calls.add(tool="calc").arguments.update({})
        model.scripted.rules.add(on_step=2, answer="{{last_tool_result}}")
        tenant = await support_agent(live, tool=tool, model=model)
        await s.settled()
        events = await run_to_end(s, await s.client_key(tenant), ask(tenant))
        (finished,) = [e.tool_call_finished for e in events if e.HasField("tool_call_finished")]
        assert not finished.ok and "own endpoint" in finished.result, finished


async def test_a_provider_quoting_the_key_never_gets_it_into_the_run(
    live: Live, run_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = await FakeOpenAI().start()
    try:
        fake.then(Behaviour(status=401, quote_key=True))
        tenant = await support_agent(live, model=h.openai_model(fake.base_url, credential="k"))
        monkeypatch.setenv("TENANT_KEY", "sk-tenant-9f8e7d6c5b4a39281706")
        async with stage(
            live, run_database_url, tmp_path, provider_credentials=(f"k=TENANT_KEY:{tenant}",)
        ) as s:
            await s.settled()
            events = await run_to_end(s, await s.client_key(tenant), ask(tenant))
            detail = stopped(events).detail
            assert "Incorrect API key provided" in detail and "[credential]" in detail
            assert "9f8e7d6c5b4a" not in str(events)
            stored = await RunStore(s.executor.db).get(events[-1].run.split("/")[-1])
            assert stored.stop_detail == detail
    finally:
        await fake.aclose()
