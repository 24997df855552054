"""Wiring: settings in, objects built, the gRPC server started and stopped gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.api import ads
from controlplane.api.ads import AdsServicer
from controlplane.api.agents import AgentRegistryServicer
from controlplane.api.api_keys import ApiKeyServicer
from controlplane.api.approvals import ApprovalServicer
from controlplane.api.audit import AuditServicer
from controlplane.api.evals import EvalServicer
from controlplane.api.executors import ExecutorServicer
from controlplane.api.feedback import FeedbackServicer
from controlplane.api.interceptors import AuthInterceptor, ErrorInterceptor
from controlplane.api.models import ModelServicer
from controlplane.api.prompts import PromptServicer
from controlplane.api.quota import QuotaServicer
from controlplane.api.rollouts import RolloutServicer
from controlplane.api.telemetry import TelemetryServicer
from controlplane.api.tenants import TenantServicer
from controlplane.api.tools import ToolServicer
from controlplane.approvals.service import Approvals
from controlplane.audit_log import AuditLog
from controlplane.auth.api_keys import ApiKeys
from controlplane.auth.key_audit import KeyAudit
from controlplane.config import Settings
from controlplane.discovery.executors import ExecutorRegistry
from controlplane.discovery.notifications import ChangeListener
from controlplane.discovery.publisher import SnapshotPublisher
from controlplane.evals.service import EvalReports
from controlplane.feedback.service import FeedbackLog
from controlplane.loops import LoopLease
from controlplane.quota.service import Quotas
from controlplane.registry.service import Registry
from controlplane.retention import LEASE as RETENTION
from controlplane.retention import Retention
from controlplane.rollouts.service import Rollouts
from controlplane.store.database import Database, open_database
from controlplane.telemetry.service import Telemetry
from pilothouse.configuration import MAX_MESSAGE_BYTES
from pilothouse.decoding import DecodeGuard
from pilothouse.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    api_key_pb2,
    api_key_pb2_grpc,
    approval_pb2,
    approval_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    discovery_pb2,
    discovery_pb2_grpc,
    eval_pb2,
    eval_pb2_grpc,
    feedback_pb2,
    feedback_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    prompt_pb2,
    prompt_pb2_grpc,
    quota_pb2,
    quota_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
)

log = logging.getLogger("pilothouse.controlplane")

PILOTHOUSE_SERVICES = tuple(
    d.services_by_name[name].full_name
    for d, name in (
        (tool_pb2.DESCRIPTOR, "ToolService"),
        (model_pb2.DESCRIPTOR, "ModelService"),
        (prompt_pb2.DESCRIPTOR, "PromptService"),
        (agent_pb2.DESCRIPTOR, "AgentRegistryService"),
        (tenant_pb2.DESCRIPTOR, "TenantService"),
        (api_key_pb2.DESCRIPTOR, "ApiKeyService"),
        (discovery_pb2.DESCRIPTOR, "ExecutorService"),
        (approval_pb2.DESCRIPTOR, "ApprovalService"),
        (telemetry_pb2.DESCRIPTOR, "TelemetryService"),
        (quota_pb2.DESCRIPTOR, "QuotaService"),
        (audit_pb2.DESCRIPTOR, "AuditService"),
        (feedback_pb2.DESCRIPTOR, "FeedbackService"),
        (rollout_pb2.DESCRIPTOR, "RolloutService"),
        (eval_pb2.DESCRIPTOR, "EvalService"),
    )
)
SERVICE_NAMES = (*PILOTHOUSE_SERVICES, ads.ADS_SERVICE)


@dataclass
class ControlPlane:
    """A running control plane. Build it with ``start``; stop it with ``aclose``."""

    settings: Settings
    db: Database
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    publisher: SnapshotPublisher
    executors: ExecutorRegistry
    port: int
    bootstrap_token: str | None
    """The admin key generated at this start, if one was; shown once."""
    background: list[asyncio.Task[None]]
    """Loops that run for the life of the server (approval expiry, rollout analysis)."""
    listener: ChangeListener | None = None
    """On PostgreSQL: hears changes made through other replicas."""

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @classmethod
    async def start(cls, settings: Settings) -> ControlPlane:
        db = open_database(settings.database_url)
        try:
            await db.migrate()
            api_keys = ApiKeys(
                db, cache_ttl=settings.auth_cache_ttl, on_change=lambda: publisher.nudge()
            )
            token = await api_keys.ensure_bootstrap_admin(settings.bootstrap_key)
        except BaseException:
            await db.aclose()
            raise
        registry = Registry(db, on_change=lambda: publisher.nudge())
        publisher = SnapshotPublisher(registry, reconcile_interval=settings.reconcile_interval)
        try:
            await publisher.start()
        except BaseException:
            await db.aclose()
            raise
        executors = ExecutorRegistry(db)
        server = grpc.aio.server(
            interceptors=[
                DecodeGuard(),
                ErrorInterceptor(),
                AuthInterceptor(api_keys, KeyAudit(db)),
            ],
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                # A tenant's configuration goes to executors in one response.
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        tool_pb2_grpc.add_ToolServiceServicer_to_server(ToolServicer(registry), server)
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(
            TelemetryServicer(Telemetry(db)), server
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(AuditLog(db)), server)
        feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(
            FeedbackServicer(FeedbackLog(db)), server
        )
        quotas = Quotas(
            db,
            registry,
            lease_ttl=timedelta(seconds=settings.quota_lease_ttl),
            refresh_interval=timedelta(seconds=settings.quota_refresh),
        )
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaServicer(quotas), server)
        replica = f"{socket.gethostname()}/{os.getpid()}"
        # Leases of background loops need each running control plane told apart, also
        # two in one process.
        holder = f"{replica}/{secrets.token_hex(4)}"
        reports = EvalReports(db, registry)
        rollouts = Rollouts(
            db, registry, replica=holder, tick=settings.rollout_tick, eval_gate=reports.gate
        )
        eval_pb2_grpc.add_EvalServiceServicer_to_server(EvalServicer(registry, reports), server)
        rollout_pb2_grpc.add_RolloutServiceServicer_to_server(RolloutServicer(rollouts), server)
        model_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
        prompt_pb2_grpc.add_PromptServiceServicer_to_server(PromptServicer(registry), server)
        agent_pb2_grpc.add_AgentRegistryServiceServicer_to_server(
            AgentRegistryServicer(registry), server
        )
        tenant_pb2_grpc.add_TenantServiceServicer_to_server(TenantServicer(registry), server)
        api_key_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(api_keys), server)
        approvals = Approvals(db)
        approval_pb2_grpc.add_ApprovalServiceServicer_to_server(ApprovalServicer(approvals), server)
        discovery_pb2_grpc.add_ExecutorServiceServicer_to_server(
            ExecutorServicer(executors, publisher), server
        )
        ads.add_to_server(
            AdsServicer(publisher, executors, replica=replica),
            server,
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            if settings.tls:
                port = server.add_secure_port(settings.listen, _credentials(settings))
            else:
                port = server.add_insecure_port(settings.listen)
        except RuntimeError as e:
            await publisher.aclose()
            await db.aclose()
            raise OSError(f"cannot listen on {settings.listen}: {e}") from e
        await server.start()
        listener = None
        if db.dialect == "postgresql":
            listener = ChangeListener(db.url, publisher.nudge)
            listener.start()
        background = [
            asyncio.create_task(approvals.expire_forever(), name="approval-expiry"),
            asyncio.create_task(rollouts.run_forever(), name="rollout-analysis"),
            _sole_loop(
                db,
                holder,
                QUOTA_EXPIRY,
                interval=settings.quota_lease_ttl / 2,
                work=quotas.expire_leases,
            ),
        ]
        if settings.retention.prunes:
            background.append(
                _sole_loop(
                    db,
                    holder,
                    RETENTION,
                    interval=settings.retention_interval,
                    work=Retention(db, settings.retention).prune,
                )
            )
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        plane = cls(
            settings,
            db,
            server,
            health_servicer,
            publisher,
            executors,
            port,
            token,
            background,
            listener,
        )
        log.info(
            "control plane serving",
            extra={
                "address": plane.address,
                "tls": "mutual"
                if settings.tls and settings.tls.client_ca_file
                else bool(settings.tls),
                "database": db.url.render_as_string(hide_password=True),
            },
        )
        return plane

    async def aclose(self) -> None:
        """Graceful stop: health goes NOT_SERVING, new calls are refused, in-flight calls
        get the grace period to finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace)
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.executors.aclose()
        if self.listener is not None:
            await self.listener.aclose()
        await self.publisher.aclose()
        await self.db.aclose()
        log.info("control plane stopped")


QUOTA_EXPIRY = "quota-lease-expiry"


def _sole_loop(
    db: Database,
    holder: str,
    name: str,
    *,
    interval: float,
    work: Callable[[datetime], Awaitable[object]],
) -> asyncio.Task[None]:
    """``work`` every ``interval`` seconds on whichever replica holds the lease ``name``;
    a replica that dies holding it hands it on after three intervals (5 s at least)."""
    lease = LoopLease(db, name, holder, timedelta(seconds=max(5.0, 3 * interval)))
    return asyncio.create_task(lease.run(interval, work), name=name)


def _credentials(settings: Settings) -> grpc.ServerCredentials:
    tls = settings.tls
    assert tls is not None
    pair = [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())]
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(
        pair, root_certificates=tls.client_ca_file.read_bytes(), require_client_auth=True
    )


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    plane = await ControlPlane.start(settings)
    if plane.bootstrap_token:
        # Printed once, on stdout, so it can be captured; it is never stored in clear.
        print(
            "Bootstrap admin key (shown once; store it safely):\n"
            f"  {plane.bootstrap_token}\n"
            "Use it as PILOTHOUSE_API_KEY or --api-key.",
            flush=True,
        )
    print(f"control plane listening on {plane.address}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
        await plane.aclose()
