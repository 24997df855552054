"""Bad input gets a clear error on both servers: INVALID_ARGUMENT with a BadRequest naming
the field, values cut short in the message; never UNKNOWN, INTERNAL, or a refusal too big
to send (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from pilothouse.v1 import api_key_pb2, run_pb2, telemetry_pb2, telemetry_pb2_grpc, tool_pb2
from tests import helpers as h
from tests.conftest import Live
from tests.integration.test_agent_runs import stage, support_agent

Code = grpc.StatusCode
HUGE_SECONDS = 10**15


async def test_out_of_range_times_name_their_field(live: Live) -> None:
    tenant = await live.new_tenant()
    tool = h.tool()
    tool.timeout.CopyFrom(duration_pb2.Duration(seconds=HUGE_SECONDS))
    err = await h.fails(
        live.tools.CreateTool(
            tool_pb2.CreateToolRequest(parent=f"tenants/{tenant}", tool_id="t", tool=tool),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "timeout" in h.field_violations(err)
    err = await h.fails(
        live.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(
                    role=api_key_pb2.ROLE_CLIENT,
                    tenant=f"tenants/{tenant}",
                    expire_time=timestamp_pb2.Timestamp(seconds=HUGE_SECONDS),
                )
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "api_key.expire_time" in h.field_violations(err)
    err = await h.fails(
        telemetry_pb2_grpc.TelemetryServiceStub(live.channel).QueryUsage(
            telemetry_pb2.QueryUsageRequest(
                parent=f"tenants/{tenant}",
                start_time=timestamp_pb2.Timestamp(seconds=-(10**12)),
            ),
            metadata=live.md(),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "start_time" in h.field_violations(err)


async def test_long_values_are_cut_short_in_errors(live: Live) -> None:
    name = "tenants/" + "x" * 5000
    err = await h.fails(
        live.tools.GetTool(tool_pb2.GetToolRequest(name=name), metadata=live.md()),
        Code.INVALID_ARGUMENT,
    )
    assert len(err.details() or "") < 1200


async def test_the_executor_bounds_what_a_run_request_carries(
    live: Live, run_database_url: str, tmp_path: Path
) -> None:
    tenant = await support_agent(live)
    async with stage(live, run_database_url, tmp_path) as s:
        key = await s.client_key(tenant)
        await s.settled()
        md = (("authorization", f"Bearer {key}"),)

        def start(**fields: object) -> run_pb2.StartRunRequest:
            request = run_pb2.StartRunRequest(
                agent=f"tenants/{tenant}/agents/helper", input="x", variables={"customer": "A"}
            )
            for field, value in fields.items():
                if field == "variables":
                    request.variables.update(value)  # type: ignore[arg-type]
                elif field == "max_usd":
                    request.budget.max_usd = str(value)
                elif field == "max_wall_time":
                    request.budget.max_wall_time.CopyFrom(value)  # type: ignore[arg-type]
                else:
                    setattr(request, field, value)
            return request

        cases = [
            (start(max_usd="NaN"), "budget.max_usd"),
            (start(max_usd="1E+999999999"), "budget.max_usd"),
            (start(max_usd="-1"), "budget.max_usd"),
            (
                start(max_wall_time=duration_pb2.Duration(seconds=HUGE_SECONDS)),
                "budget.max_wall_time",
            ),
            (start(variables={"customer": "v" * 3_500_000}), "variables[customer]"),
            (start(user_id="u" * 1_000_000), "user_id"),
            (start(idempotency_key="k" * 100_000), "idempotency_key"),
        ]
        for request, field in cases:
            err = await h.fails(s.agents.StartRun(request, metadata=md), Code.INVALID_ARGUMENT)
            assert field in h.field_violations(err), (field, err.details())
            assert len(err.details() or "") < 1200

        forged = base64.urlsafe_b64encode(
            json.dumps({"p": f"tenants/{tenant}", "t": "2026-01-01T00:00:00", "i": "x"}).encode()
        ).decode()
        for token in (forged, "not-base64!", base64.urlsafe_b64encode(b"[" * 5000).decode()):
            err = await h.fails(
                s.agents.ListRuns(
                    run_pb2.ListRunsRequest(parent=f"tenants/{tenant}", page_token=token),
                    metadata=md,
                ),
                Code.INVALID_ARGUMENT,
            )
            assert "page_token" in h.field_violations(err)
        await h.fails(
            s.agents.GetRun(
                run_pb2.GetRunRequest(name=f"tenants/{tenant}/runs/" + "r" * 5000), metadata=md
            ),
            Code.INVALID_ARGUMENT,
        )
