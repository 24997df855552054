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
from storekit.flags import retention_days


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
        "--retention-interval",
        type=float,
        help="seconds between pruning passes (PILOTHOUSE_RETENTION_INTERVAL; default 3600)",
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
        "--credentials-file",
        help="YAML file declaring provider credentials (PILOTHOUSE_CREDENTIALS_FILE)",
    )
    parser.add_argument("--log-level", help="(PILOTHOUSE_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["json", "text"], help="(PILOTHOUSE_LOG_FORMAT)")


def from_arguments(ns: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Settings:
    def pick(flag: str, var: str) -> str | None:
        value = getattr(ns, flag, None)
        return value if value is not None else env.get(var) or None

    api_key = pick("api_key", "PILOTHOUSE_EXECUTOR_KEY")
    if not api_key:
        raise SystemExit("an executor key is required: --api-key or PILOTHOUSE_EXECUTOR_KEY")
    defaults = Settings(api_key=api_key)
    ca, cert, key = (
        pick("control_plane_ca", "PILOTHOUSE_TLS_CA"),
        pick("client_cert", "PILOTHOUSE_TLS_CERT"),
        pick("client_key", "PILOTHOUSE_TLS_KEY"),
    )
    settings = Settings(
        api_key=api_key,
        listen=pick("listen", "PILOTHOUSE_EXECUTOR_LISTEN") or defaults.listen,
        control_plane=pick("control_plane", "PILOTHOUSE_CONTROL_PLANE") or defaults.control_plane,
        node_id=pick("node_id", "PILOTHOUSE_NODE_ID") or defaults.node_id,
        cluster=pick("cluster", "PILOTHOUSE_CLUSTER") or defaults.cluster,
        state_dir=Path(pick("state_dir", "PILOTHOUSE_STATE_DIR") or defaults.state_dir),
        run_store_url=pick("run_store_url", "PILOTHOUSE_RUN_STORE_URL") or defaults.run_store_url,
        control_plane_ca=Path(ca) if ca else None,
        client_cert=Path(cert) if cert else None,
        client_key=Path(key) if key else None,
        lease_ttl=float(pick("lease_ttl", "PILOTHOUSE_LEASE_TTL") or defaults.lease_ttl),
        max_concurrent_runs=int(
            pick("max_concurrent_runs", "PILOTHOUSE_MAX_CONCURRENT_RUNS")
            or defaults.max_concurrent_runs
        ),
        outbox_limit=int(pick("outbox_limit", "PILOTHOUSE_OUTBOX_LIMIT") or defaults.outbox_limit),
        retain_runs_days=retention_days(
            pick("retain_runs_days", "PILOTHOUSE_RETAIN_RUNS_DAYS"), "--retain-runs-days"
        ),
        retention_interval=float(
            pick("retention_interval", "PILOTHOUSE_RETENTION_INTERVAL")
            or defaults.retention_interval
        ),
        allow_egress=tuple(
            ns.allow_egress
            if getattr(ns, "allow_egress", None)
            else [e for e in env.get("PILOTHOUSE_ALLOW_EGRESS", "").split(",") if e.strip()]
        ),
        provider_credentials=tuple(getattr(ns, "provider_credential", None) or ()),
        credentials_file=Path(file)
        if (file := pick("credentials_file", "PILOTHOUSE_CREDENTIALS_FILE"))
        else None,
        log_level=(pick("log_level", "PILOTHOUSE_LOG_LEVEL") or defaults.log_level).upper(),
        log_format=pick("log_format", "PILOTHOUSE_LOG_FORMAT") or defaults.log_format,
    )
    if settings.retention_interval <= 0:
        raise SystemExit("--retention-interval must be positive")
    try:
        settings.egress_policy()
        settings.credentials(env)
    except ValueError as e:  # CredentialConfigError is one
        raise SystemExit(str(e)) from None
    return settings
