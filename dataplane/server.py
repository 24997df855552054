"""Wiring of an executor: settings in, the configuration watcher and the gRPC server up;
graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import TracerProvider

from dataplane.api.agents import AgentServicer
from dataplane.approvals import ApprovalBridge
from dataplane.config.watcher import ConfigWatcher
from dataplane.http1 import Http1Transport, http_client
from dataplane.models.gateway import ModelGateway
from dataplane.orchestrator.context import Exhausted
from dataplane.orchestrator.runs import Runs
from dataplane.quota.leases import Quotas
from dataplane.runstore.database import open_run_database
from dataplane.runstore.memory import Memory
from dataplane.runstore.outbox import Outbox
from dataplane.runstore.retention import RunRetention
from dataplane.runstore.store import RunStore
from dataplane.settings import Settings
from dataplane.telemetry.export import providers_from_environment
from dataplane.telemetry.otel import Tracing
from dataplane.telemetry.relay import OutboxRelay, RelaySettings
from dataplane.tools.mcp import McpSessions
from dataplane.tools.router import ToolRouter
from pilothouse.configuration import MAX_MESSAGE_BYTES
from pilothouse.decoding import DecodeGuard
from pilothouse.v1 import run_pb2, run_pb2_grpc
from storekit.database import Database

log = logging.getLogger("pilothouse.executor")


# gRPC's own reconnection backoff (up to two minutes by default) would hold an executor
# away from a control plane that came back long after it did; keep it short.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    # One tenant's configuration arrives in one response: as large as the control plane
    # may send one.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def control_plane_channel(settings: Settings) -> grpc.aio.Channel:
    if settings.control_plane_ca is None:
        return grpc.aio.insecure_channel(settings.control_plane, options=CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=settings.control_plane_ca.read_bytes(),
        private_key=settings.client_key.read_bytes() if settings.client_key else None,
        certificate_chain=settings.client_cert.read_bytes() if settings.client_cert else None,
    )
    return grpc.aio.secure_channel(settings.control_plane, creds, options=CHANNEL_OPTIONS)


def control_plane_endpoints(target: str) -> list[tuple[str, int]]:
    """The (host, port) pairs a gRPC target names: ``host:port``, ``dns:///host:port``,
    ``ipv4:a:port,b:port``, ``ipv6:[a]:port,…``."""
    scheme, colon, rest = target.partition(":")
    if colon and scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
    elif target.startswith("dns:"):
        addresses = [target.rsplit("/", 1)[-1]]
    else:
        addresses = [target]
    out = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


@dataclass
class Executor:
    """A running executor. Build it with ``start``; stop it with ``aclose``."""

    settings: Settings
    channel: grpc.aio.Channel
    watcher: ConfigWatcher
    db: Database
    http: httpx.AsyncClient
    mcp: McpSessions
    runs: Runs
    approvals: ApprovalBridge
    relay: OutboxRelay
    quotas: Quotas
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    _serving_task: asyncio.Task[None]
    _providers: tuple[SdkTracerProvider | None, SdkMeterProvider | None]
    _retention_task: asyncio.Task[None] | None = None
    """Telemetry providers this executor made (and shuts down, flushing them)."""

    @property
    def address(self) -> str:
        return f"{self.settings.listen.rsplit(':', 1)[0]}:{self.port}"

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> Executor:
        """``tracer_provider``, ``meter_provider``: where spans and metrics go; by
        default OTLP as the ``OTEL_*`` variables say, or nowhere."""
        owned: tuple[SdkTracerProvider | None, SdkMeterProvider | None] = (None, None)
        if tracer_provider is None and meter_provider is None:
            owned = providers_from_environment(
                os.environ, service="pilothouse-executor", instance=settings.node_id
            )
            tracer_provider, meter_provider = owned
        tracing = Tracing(tracer_provider, meter_provider)
        channel = control_plane_channel(settings)
        watcher = ConfigWatcher(
            channel,
            api_key=settings.api_key,
            node_id=settings.node_id,
            cluster=settings.cluster,
            lkg_path=settings.lkg_path,
        )
        db = open_run_database(settings.run_store_url)
        await db.migrate()
        await watcher.start()
        store = RunStore(db, lease_ttl=timedelta(seconds=settings.lease_ttl))
        egress = settings.egress_policy()
        if os.environ.get("OPENAI_BASE_URL"):
            egress.allow_url(os.environ["OPENAI_BASE_URL"])
        for host, port in control_plane_endpoints(settings.control_plane):
            egress.protect(host, port)
        transport = Http1Transport(egress=egress)
        http = http_client(transport)
        mcp = McpSessions(egress=egress)
        owner = f"{settings.node_id}/{secrets.token_hex(3)}"
        relay = OutboxRelay(
            channel,
            Outbox(db),
            api_key=settings.api_key,
            executor=settings.node_id,
            owner=owner,
            settings=RelaySettings(max_backlog=settings.outbox_limit),
        )
        store.listeners.append(lambda _run, _events: relay.nudge())
        tracing.observe_outbox(lambda: _backlog(relay))
        quotas = Quotas(channel, watcher, api_key=settings.api_key, executor=settings.node_id)
        runs = Runs(
            store,
            ModelGateway(transport, credentials=settings.credentials()),
            ToolRouter(http, Memory(db), mcp),
            watcher,
            owner=owner,
            executor=settings.node_id,
            max_concurrent=settings.max_concurrent_runs,
            on_pause=lambda: bridge.nudge(),
            gates=[lambda _admission: _outbox_has_room(relay)],
            quotas=quotas,
            tracing=tracing,
        )
        bridge = ApprovalBridge(
            channel, store, watcher, api_key=settings.api_key, on_claimable=runs.wake
        )
        await runs.start()
        await bridge.start()
        await relay.start()
        await quotas.start()
        server = grpc.aio.server(
            interceptors=[DecodeGuard()],
            # gRPC shares a port by default: two executors on one port would split its
            # calls without a word. Only a supervisor's workers share one, on purpose.
            options=[("grpc.so_reuseport", 1 if settings.reuse_port else 0)],
        )
        run_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(runs, store, watcher, executor=settings.node_id), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        agent_service = run_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
        reflection.enable_server_reflection(
            (agent_service, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = _bind(server, settings.listen)
        egress.protect(settings.listen.rsplit(":", 1)[0], port)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        serving = asyncio.create_task(_serve_once_configured(watcher, health_servicer))
        retention = None
        if settings.retain_runs_days is not None:
            pruner = RunRetention(db, timedelta(days=settings.retain_runs_days))
            retention = asyncio.create_task(
                pruner.run_forever(settings.retention_interval), name="run-retention"
            )
        executor = cls(
            settings,
            channel,
            watcher,
            db,
            http,
            mcp,
            runs,
            bridge,
            relay,
            quotas,
            server,
            health_servicer,
            port,
            serving,
            owned,
            retention,
        )
        log.info("executor started", extra={"address": executor.address, "node": settings.node_id})
        return executor

    async def aclose(self) -> None:
        await self.health.enter_graceful_shutdown()
        self._serving_task.cancel()
        if self._retention_task is not None:
            self._retention_task.cancel()
        await self.server.stop(self.settings.shutdown_grace)
        await self.approvals.aclose()
        await self.runs.aclose()
        await self.quotas.aclose()
        await self.relay.aclose()
        await self.watcher.aclose()
        await self.channel.close()
        await self.http.aclose()
        await self.mcp.aclose()
        await self.db.aclose()
        for provider in self._providers:
            if provider is not None:
                await asyncio.to_thread(provider.shutdown)
        log.info("executor stopped")


def _bind(server: grpc.aio.Server, listen: str) -> int:
    """The port bound; one that cannot be had stops the start with a message, not a
    traceback (the process exits, taking what had started with it)."""
    try:
        return server.add_insecure_port(listen)
    except RuntimeError:
        raise SystemExit(
            f"--listen {listen}: cannot listen there (in use, or not an address of this machine)"
        ) from None


def _backlog(relay: OutboxRelay) -> tuple[int, float]:
    """The outbox's events and the age in seconds of its oldest, as last counted."""
    backlog = relay.backlog
    oldest = backlog.oldest
    return backlog.events, (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0


def _outbox_has_room(relay: OutboxRelay) -> None:
    """Back-pressure: while the control plane does not take telemetry, the outbox fills;
    past its limit new runs are refused (running ones go on, and nothing is dropped)."""
    if relay.full():
        backlog = relay.backlog
        since = backlog.oldest.isoformat(timespec="seconds") if backlog.oldest else "now"
        raise Exhausted(
            f"the telemetry outbox holds {backlog.events} events (limit "
            f"{relay.settings.max_backlog}), waiting for the control plane since {since}",
            retry_after=5.0,
        )


async def _serve_once_configured(
    watcher: ConfigWatcher, health_servicer: health.aio.HealthServicer
) -> None:
    """Health turns SERVING once a whole configuration is in force: the control plane's
    initial state received, or the last-known-good file loaded."""
    config = await watcher.wait_until_ready()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("configuration in force", extra={"version": config.version})


def _announce(executor: Executor) -> None:
    print(f"executor listening on {executor.address}", file=sys.stderr, flush=True)


async def serve(settings: Settings, started: Callable[[Executor], None] = _announce) -> None:
    """Run an executor until SIGTERM or SIGINT; ``started`` hears once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    executor = await Executor.start(settings)
    started(executor)
    try:
        await stop.wait()
    finally:
        await executor.aclose()
