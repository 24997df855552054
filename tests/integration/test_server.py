"""The server itself: health, reflection, TLS and mutual TLS, graceful shutdown, start-up."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.config import TlsSettings
from controlplane.registry.service import Registry
from controlplane.server import SERVICE_NAMES
from pilothouse.v1 import tenant_pb2, tenant_pb2_grpc, tool_pb2
from tests.certs import make_certs
from tests.conftest import Live, start_live


async def test_health_is_open_and_serving(live: Live) -> None:
    stub = health_pb2_grpc.HealthStub(live.channel)
    for service in ("", *SERVICE_NAMES):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_every_service(live: Live) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(live.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert set(SERVICE_NAMES) <= names
    assert "grpc.health.v1.Health" in names


async def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cp.db'}"


async def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    url = await _sqlite_url(tmp_path)
    plane = await start_live(url, tls=TlsSettings(certs.server.cert, certs.server.key))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
        async with grpc.aio.secure_channel(plane.address, creds) as channel:
            stub = tenant_pb2_grpc.TenantServiceStub(channel)
            await stub.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=plane.md())
        async with grpc.aio.insecure_channel(plane.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tenant_pb2_grpc.TenantServiceStub(plain).ListTenants(
                    tenant_pb2.ListTenantsRequest(), metadata=plane.md(), timeout=2
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await plane.channel.close()
        await plane.plane.aclose()

    mutual = await start_live(
        url, tls=TlsSettings(certs.server.cert, certs.server.key, client_ca_file=certs.ca)
    )
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
        async with grpc.aio.secure_channel(mutual.address, anonymous) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tenant_pb2_grpc.TenantServiceStub(channel).ListTenants(
                    tenant_pb2.ListTenantsRequest(), metadata=mutual.md(), timeout=2
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        identified = grpc.ssl_channel_credentials(
            root_certificates=certs.ca.read_bytes(),
            private_key=certs.client.key.read_bytes(),
            certificate_chain=certs.client.cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(mutual.address, identified) as channel:
            await tenant_pb2_grpc.TenantServiceStub(channel).ListTenants(
                tenant_pb2.ListTenantsRequest(), metadata=mutual.md()
            )
    finally:
        await mutual.channel.close()
        await mutual.plane.aclose()


async def test_graceful_shutdown_finishes_in_flight_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = await start_live(await _sqlite_url(tmp_path))
    tenant = await plane.new_tenant()
    started = asyncio.Event()
    original = Registry.list_resources

    async def slow_list(self: Registry, *args: object, **kwargs: object) -> object:
        started.set()
        await asyncio.sleep(0.5)
        return await original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Registry, "list_resources", slow_list)
    in_flight = asyncio.ensure_future(
        plane.tools.ListTools(
            tool_pb2.ListToolsRequest(parent=f"tenants/{tenant}"), metadata=plane.md()
        )
    )
    await started.wait()
    health = health_pb2_grpc.HealthStub(plane.channel)
    closing = asyncio.ensure_future(plane.plane.aclose())
    await asyncio.sleep(0.1)
    assert not in_flight.done()
    response = await in_flight
    assert list(response.tools) == []
    await closing
    with pytest.raises(grpc.aio.AioRpcError):
        await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
    await plane.channel.close()


async def _read_until(stream: asyncio.StreamReader, marker: str, timeout: float = 20) -> str:
    seen = ""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"stream ended before {marker!r}: {seen}")
            seen += line.decode()
    return seen


async def test_sigterm_stops_the_process_gracefully_and_bootstrap_key_is_shown_once(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PILOTHOUSE_LOG_FORMAT": "json"}
    env.pop("PILOTHOUSE_BOOTSTRAP_KEY", None)
    args = [
        sys.executable,
        "-m",
        "controlplane",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        f"sqlite:///{tmp_path / 'cp.db'}",
    ]

    async def run_once() -> tuple[str, str]:
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None and proc.stdout is not None
        await _read_until(proc.stderr, "listening on")
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        return out.decode(), err.decode()

    first_out, first_err = await run_once()
    assert "Bootstrap admin key" in first_out and "ph_" in first_out
    assert '"message": "shutting down"' in first_err
    second_out, _ = await run_once()
    assert "ph_" not in second_out, "the key is shown once, on first start only"


async def test_a_bug_is_internal_never_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = await start_live(await _sqlite_url(tmp_path))
    tenant = await plane.new_tenant()

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(Registry, "get", broken)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await plane.tools.GetTool(
                tool_pb2.GetToolRequest(name=f"tenants/{tenant}/tools/x"), metadata=plane.md()
            )
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "boom" not in (info.value.details() or ""), "internals stay in the server log"
    finally:
        await plane.channel.close()
        await plane.plane.aclose()
