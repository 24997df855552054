"""An async client for the control plane's API."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from pilothouse.errors import ApiError
from pilothouse.v1 import (
    agent_pb2_grpc,
    api_key_pb2_grpc,
    approval_pb2_grpc,
    audit_pb2_grpc,
    discovery_pb2_grpc,
    eval_pb2_grpc,
    model_pb2_grpc,
    prompt_pb2_grpc,
    quota_pb2_grpc,
    rollout_pb2_grpc,
    run_pb2_grpc,
    telemetry_pb2_grpc,
    tenant_pb2_grpc,
    tool_pb2_grpc,
)

R = TypeVar("R")

DEFAULT_ADDRESS = "127.0.0.1:7070"
DEFAULT_EXECUTOR_ADDRESS = "127.0.0.1:7071"


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None = None
    """CA that signed the server's certificate; None means the system's roots."""
    cert_file: Path | None = None
    """Client certificate, for mutual TLS."""
    key_file: Path | None = None
    server_name: str | None = None
    """Name to check the server's certificate against, when it differs from the address."""


@dataclass(frozen=True)
class ClientConfig:
    address: str = DEFAULT_ADDRESS
    api_key: str | None = None
    tls: TlsConfig | None = None
    timeout: float = 30.0
    """Deadline of each call, in seconds."""
    executor_address: str = DEFAULT_EXECUTOR_ADDRESS
    """An executor of the pool (AgentService): runs go there, not to the control plane."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: Any) -> ClientConfig:
        """PILOTHOUSE_ADDR, PILOTHOUSE_EXECUTOR_ADDR, PILOTHOUSE_API_KEY and
        PILOTHOUSE_TLS_CA / _CERT / _KEY; explicit overrides that are not None win."""
        tls = None
        ca, cert, key = (env.get(f"PILOTHOUSE_TLS_{k}") for k in ("CA", "CERT", "KEY"))
        if ca or cert:
            tls = TlsConfig(
                Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None
            )
        values: dict[str, Any] = {
            "address": env.get("PILOTHOUSE_ADDR") or DEFAULT_ADDRESS,
            "executor_address": env.get("PILOTHOUSE_EXECUTOR_ADDR") or DEFAULT_EXECUTOR_ADDRESS,
            "api_key": env.get("PILOTHOUSE_API_KEY") or None,
            "tls": tls,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class Client:
    """Channels and stubs for every control-plane service. Use ``call`` to make a call:
    it adds the key and the deadline, and turns gRPC errors into ``ApiError``."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.channel = _channel(config)
        self.tools = tool_pb2_grpc.ToolServiceStub(self.channel)
        self.models = model_pb2_grpc.ModelServiceStub(self.channel)
        self.prompts = prompt_pb2_grpc.PromptServiceStub(self.channel)
        self.agents = agent_pb2_grpc.AgentRegistryServiceStub(self.channel)
        self.tenants = tenant_pb2_grpc.TenantServiceStub(self.channel)
        self.api_keys = api_key_pb2_grpc.ApiKeyServiceStub(self.channel)
        self.executors = discovery_pb2_grpc.ExecutorServiceStub(self.channel)
        self.approvals = approval_pb2_grpc.ApprovalServiceStub(self.channel)
        self.telemetry = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)
        self.quota = quota_pb2_grpc.QuotaServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.rollouts = rollout_pb2_grpc.RolloutServiceStub(self.channel)
        self.evals = eval_pb2_grpc.EvalServiceStub(self.channel)
        self._executor_channel: grpc.aio.Channel | None = None

    @property
    def runs(self) -> run_pb2_grpc.AgentServiceAsyncStub:
        """AgentService, on the configured executor."""
        if self._executor_channel is None:
            self._executor_channel = _channel(self.config, self.config.executor_address)
        return run_pb2_grpc.AgentServiceStub(self._executor_channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.config.api_key}"),) if self.config.api_key else ()

    async def stream(
        self, method: Callable[..., AsyncIterable[R]], request: Any, *, timeout: float | None = None
    ) -> AsyncIterator[R]:
        """A server-streaming call; ``timeout`` None means no deadline."""
        try:
            async for item in method(request, metadata=self._metadata(), timeout=timeout):
                yield item
        except grpc.aio.AioRpcError as e:
            raise ApiError.from_rpc(e) from None

    async def call(
        self, method: Callable[..., Awaitable[R]], request: Any, *, timeout: float | None = None
    ) -> R:
        """A unary call; ``timeout`` None means the configured one."""
        try:
            return await method(
                request, metadata=self._metadata(), timeout=timeout or self.config.timeout
            )
        except grpc.aio.AioRpcError as e:
            raise ApiError.from_rpc(e) from None

    async def aclose(self) -> None:
        await self.channel.close()
        if self._executor_channel is not None:
            await self._executor_channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _channel(config: ClientConfig, address: str | None = None) -> grpc.aio.Channel:
    address = address or config.address
    if config.tls is None:
        return grpc.aio.insecure_channel(address)
    tls = config.tls
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes() if tls.ca_file else None,
        private_key=tls.key_file.read_bytes() if tls.key_file else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None,
    )
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.aio.secure_channel(address, creds, options=options)
