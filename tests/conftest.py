"""Shared fixtures: databases (SQLite and PostgreSQL) and a live control plane on loopback."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from controlplane.auth import keys
from controlplane.config import Settings
from controlplane.server import ControlPlane
from dataplane.runstore.database import open_run_database
from pilothouse.v1 import (
    agent_pb2_grpc,
    api_key_pb2,
    api_key_pb2_grpc,
    approval_pb2_grpc,
    model_pb2_grpc,
    prompt_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
    tool_pb2_grpc,
)
from storekit.database import Database

PG_ENV = "PILOTHOUSE_TEST_PG_DSN"


async def fresh_pg_database() -> AsyncIterator[str]:
    dsn = os.environ.get(PG_ENV)
    if not dsn:
        pytest.skip(f"{PG_ENV} is not set: PostgreSQL backend tests skipped")
    base = make_url(dsn)
    name = f"pilothouse_test_{secrets.token_hex(6)}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield base.set(database=name).render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for the control plane in this session, dropped after."""
    async for url in fresh_pg_database():
        yield url


@pytest.fixture(scope="session")
async def pg_run_url() -> AsyncIterator[str]:
    """Another fresh PostgreSQL database, for the executors' run store."""
    async for url in fresh_pg_database():
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def run_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('runs') / 'runs.db'}"
    url: str = request.getfixturevalue("pg_run_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
async def own_run_database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A run store of this test alone, on each backend: for a test whose executor would
    otherwise also claim runs other tests left queued or orphaned in the shared one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'own-runs.db'}"
        return
    async for url in fresh_pg_database():
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def own_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A control-plane database of this test alone, on each backend: for a test that
    prunes, or otherwise changes what every tenant sees."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'own-controlplane.db'}"
        return
    async for url in fresh_pg_database():
        yield url


@pytest.fixture
async def run_db(run_database_url: str) -> AsyncIterator[Database]:
    """A migrated run-store database, on each backend."""
    database = open_run_database(run_database_url)
    await database.migrate()
    yield database
    await database.aclose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'controlplane.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@dataclass
class Live:
    """A running control plane and an admin's view of it."""

    plane: ControlPlane
    channel: grpc.aio.Channel
    admin_key: str

    @property
    def address(self) -> str:
        return self.plane.address

    def md(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key or self.admin_key}"),)

    @property
    def tools(self) -> tool_pb2_grpc.ToolServiceStub:
        return tool_pb2_grpc.ToolServiceStub(self.channel)

    @property
    def models(self) -> model_pb2_grpc.ModelServiceStub:
        return model_pb2_grpc.ModelServiceStub(self.channel)

    @property
    def prompts(self) -> prompt_pb2_grpc.PromptServiceStub:
        return prompt_pb2_grpc.PromptServiceStub(self.channel)

    @property
    def agents(self) -> agent_pb2_grpc.AgentRegistryServiceStub:
        return agent_pb2_grpc.AgentRegistryServiceStub(self.channel)

    @property
    def tenants(self) -> tenant_pb2_grpc.TenantServiceStub:
        return tenant_pb2_grpc.TenantServiceStub(self.channel)

    @property
    def approvals(self) -> approval_pb2_grpc.ApprovalServiceStub:
        return approval_pb2_grpc.ApprovalServiceStub(self.channel)

    @property
    def keys(self) -> api_key_pb2_grpc.ApiKeyServiceStub:
        return api_key_pb2_grpc.ApiKeyServiceStub(self.channel)

    async def new_tenant(self, prefix: str = "t") -> str:
        tenant_id = f"{prefix}-{secrets.token_hex(4)}"
        await self.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(tenant_id=tenant_id, tenant=tenant_pb2.Tenant()),
            metadata=self.md(),
        )
        return tenant_id

    async def new_key(self, role: int, tenant: str | None) -> str:
        response = await self.keys.CreateApiKey(
            api_key_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(
                    role=role, tenant=f"tenants/{tenant}" if tenant else "", display_name="test"
                )
            ),
            metadata=self.md(),
        )
        return response.secret


async def start_live(database_url: str, **settings: Any) -> Live:
    admin_key = settings.pop("bootstrap_key", None) or keys.generate().token
    values: dict[str, Any] = {"listen": "127.0.0.1:0", "shutdown_grace": 1.0, **settings}
    plane = await ControlPlane.start(
        Settings(database_url=database_url, bootstrap_key=admin_key, **values)
    )
    channel = grpc.aio.insecure_channel(plane.address)
    return Live(plane, channel, admin_key)


@pytest.fixture(scope="session")
async def live(database_url: str) -> AsyncIterator[Live]:
    """One control plane per backend for the session; tests isolate by tenant."""
    running = await start_live(database_url)
    yield running
    await running.channel.close()
    await running.plane.aclose()


@pytest.fixture
def repo_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent
