"""Executor settings: flags first, then ``PILOTHOUSE_*`` environment variables, then
defaults."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dataplane.egress import EgressPolicy
from dataplane.models import credentials
from dataplane.models.credentials import Credentials
from storekit.flags import Flags, add_common_arguments

MAX_WORKERS = 64


@dataclass(frozen=True)
class Settings:
    api_key: str
    """The executor's key (role executor) for the control plane."""
    listen: str = "127.0.0.1:7071"
    """host:port the executor serves on; port 0 picks a free one."""
    control_plane: str = "127.0.0.1:7070"
    """The control plane's gRPC target: host:port, or a name or list of addresses that
    resolves to several replicas (the channel moves to another when one is lost)."""
    node_id: str = socket.gethostname()
    """This executor's xDS node id: keep it stable across restarts."""
    cluster: str = "default"
    """The executor pool this one belongs to."""
    state_dir: Path = Path(".pilothouse")
    """Where the last-known-good configuration file is kept."""
    run_store_url: str = "sqlite:///.pilothouse/runs.db"
    """The run store the executors of this pool share: sqlite:///file or postgresql://…"""
    control_plane_ca: Path | None = None
    """CA of the control plane's certificate; TLS when set."""
    client_cert: Path | None = None
    client_key: Path | None = None
    lease_ttl: float = 15.0
    """Seconds a claim on a run lasts unless renewed; a dead executor's runs move on after it."""
    max_concurrent_runs: int = 1000
    """Runs this executor drives at once; more wait in the run store's queue for any executor."""
    outbox_limit: int = 100_000
    """Telemetry events the outbox may hold before new runs are refused (back-pressure
    while the control plane does not take them)."""
    retain_runs_days: float | None = None
    """Days a finished run stays in the run store (with its input, history and answer);
    None keeps runs for ever."""
    retention_interval: float = 3600.0
    """Seconds between pruning passes."""
    allow_egress: tuple[str, ...] = ()
    """Destinations beyond the public internet that tenants' model, HTTP-tool and MCP
    endpoints may reach: CIDRs, addresses or host names, each optionally with :PORT
    (see dataplane/egress.py)."""
    provider_credentials: tuple[str, ...] = ()
    """``NAME=ENV_VAR:TENANTS[:ENDPOINT]`` declarations of provider credentials that
    models may name (see dataplane/models/credentials.py)."""
    credentials_file: Path | None = None
    """A YAML file declaring more provider credentials."""
    log_level: str = "INFO"
    log_format: str = "json"
    shutdown_grace: float = 10.0
    workers: int = 1
    """Executor processes on this listener (``dataplane/workers.py``): each is an
    executor of the pool with node id ``{node_id}-{i}``; one process uses one core."""
    reuse_port: bool = False
    """Share the listening port with other processes (SO_REUSEPORT): a worker's setting,
    set by the supervisor. Otherwise a port already taken is an error at start."""

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.from_entries(self.allow_egress)

    def credentials(self, env: Mapping[str, str] = os.environ) -> Credentials:
        return credentials.from_settings(self.provider_credentials, self.credentials_file, env)

    @property
    def lkg_path(self) -> Path:
        return self.state_dir / f"executor-{self.node_id}.snapshot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="host:port (PILOTHOUSE_EXECUTOR_LISTEN)")
    parser.add_argument(
        "--control-plane",
        help="host:port, or any gRPC target: dns:///name:port, or ipv4:a:port,b:port to fail "
        "over between replicas (PILOTHOUSE_CONTROL_PLANE)",
    )
    parser.add_argument("--api-key", help="executor key (PILOTHOUSE_EXECUTOR_KEY)")
    parser.add_argument("--node-id", help="xDS node id (PILOTHOUSE_NODE_ID; default hostname)")
    parser.add_argument("--cluster", help="executor pool (PILOTHOUSE_CLUSTER)")
    parser.add_argument("--state-dir", help="directory for state files (PILOTHOUSE_STATE_DIR)")
    parser.add_argument("--run-store-url", help="run store database (PILOTHOUSE_RUN_STORE_URL)")
    parser.add_argument("--control-plane-ca", help="CA of the control plane (PILOTHOUSE_TLS_CA)")
    parser.add_argument("--client-cert", help="client certificate (PILOTHOUSE_TLS_CERT)")
    parser.add_argument("--client-key", help="client key (PILOTHOUSE_TLS_KEY)")
    parser.add_argument("--lease-ttl", type=float, help="seconds (PILOTHOUSE_LEASE_TTL)")
    parser.add_argument(
        "--max-concurrent-runs", type=int, help="(PILOTHOUSE_MAX_CONCURRENT_RUNS; default 1000)"
    )
    parser.add_argument(
        "--outbox-limit", type=int, help="(PILOTHOUSE_OUTBOX_LIMIT; default 100000)"
    )
    parser.add_argument(
        "--retain-runs-days",
        type=float,
        help="keep finished runs in the run store this many days "
        "(PILOTHOUSE_RETAIN_RUNS_DAYS; default: for ever)",
    )
    parser.add_argument(
        "--allow-egress",
        action="append",
        metavar="CIDR|HOST[:PORT]",
        help="let tenants' model, tool and MCP endpoints reach this non-public destination "
        "(repeatable; PILOTHOUSE_ALLOW_EGRESS, comma-separated). By default only public "
        "addresses are reachable",
    )
    parser.add_argument(
        "--provider-credential",
        action="append",
        metavar="NAME=ENV_VAR:TENANTS[:ENDPOINT]",
        help="a provider credential models may name: its secret's environment variable, the "
        "tenants granted it (comma-separated ids, or *) and optionally the base URL it is "
        "bound to (repeatable)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="executor processes sharing the listener, one per core to use "
        f"(PILOTHOUSE_EXECUTOR_WORKERS; default 1, at most {MAX_WORKERS})",
    )
    parser.add_argument(
        "--credentials-file",
        help="YAML file declaring provider credentials (PILOTHOUSE_CREDENTIALS_FILE)",
    )
    add_common_arguments(parser)


def from_arguments(ns: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Settings:
    flags = Flags(ns, env)
    api_key = flags.text("api_key", "PILOTHOUSE_EXECUTOR_KEY")
    if not api_key:
        raise SystemExit("an executor key is required: --api-key or PILOTHOUSE_EXECUTOR_KEY")
    defaults = Settings(api_key=api_key)
    settings = Settings(
        api_key=api_key,
        listen=flags.text("listen", "PILOTHOUSE_EXECUTOR_LISTEN") or defaults.listen,
        control_plane=flags.text("control_plane", "PILOTHOUSE_CONTROL_PLANE")
        or defaults.control_plane,
        node_id=flags.text("node_id", "PILOTHOUSE_NODE_ID") or defaults.node_id,
        cluster=flags.text("cluster", "PILOTHOUSE_CLUSTER") or defaults.cluster,
        state_dir=flags.path("state_dir", "PILOTHOUSE_STATE_DIR") or defaults.state_dir,
        run_store_url=flags.text("run_store_url", "PILOTHOUSE_RUN_STORE_URL")
        or defaults.run_store_url,
        control_plane_ca=flags.path("control_plane_ca", "PILOTHOUSE_TLS_CA"),
        client_cert=flags.path("client_cert", "PILOTHOUSE_TLS_CERT"),
        client_key=flags.path("client_key", "PILOTHOUSE_TLS_KEY"),
        lease_ttl=flags.number(
            "lease_ttl", "PILOTHOUSE_LEASE_TTL", defaults.lease_ttl, positive=True
        ),
        max_concurrent_runs=flags.integer(
            "max_concurrent_runs", "PILOTHOUSE_MAX_CONCURRENT_RUNS", defaults.max_concurrent_runs
        ),
        outbox_limit=flags.integer(
            "outbox_limit", "PILOTHOUSE_OUTBOX_LIMIT", defaults.outbox_limit
        ),
        retain_runs_days=flags.days("retain_runs_days", "PILOTHOUSE_RETAIN_RUNS_DAYS"),
        retention_interval=flags.retention_interval(defaults.retention_interval),
        allow_egress=tuple(
            ns.allow_egress
            if getattr(ns, "allow_egress", None)
            else [e for e in env.get("PILOTHOUSE_ALLOW_EGRESS", "").split(",") if e.strip()]
        ),
        provider_credentials=tuple(getattr(ns, "provider_credential", None) or ()),
        credentials_file=flags.path("credentials_file", "PILOTHOUSE_CREDENTIALS_FILE"),
        log_level=flags.log_level(defaults.log_level),
        log_format=flags.log_format(defaults.log_format),
        workers=flags.integer(
            "workers", "PILOTHOUSE_EXECUTOR_WORKERS", defaults.workers, maximum=MAX_WORKERS
        ),
    )
    try:
        settings.egress_policy()
        settings.credentials(env)
    except ValueError as e:  # CredentialConfigError is one
        raise SystemExit(str(e)) from None
    return settings
