"""Control-plane settings: flags first, then ``PILOTHOUSE_*`` environment variables,
then defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from controlplane.retention import RetentionPolicy
from storekit.flags import Flags, add_common_arguments

DEFAULT_DATABASE = "sqlite:///.pilothouse/controlplane.db"


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    """PEM certificate chain the server presents."""
    key_file: Path
    """PEM private key of that certificate."""
    client_ca_file: Path | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS)."""


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:7070"
    """host:port to serve gRPC on; port 0 picks a free one."""
    database_url: str = DEFAULT_DATABASE
    """sqlite:///path or postgresql://user@host:port/db."""
    tls: TlsSettings | None = None
    bootstrap_key: str | None = None
    """Admin key registered at start-up (PILOTHOUSE_BOOTSTRAP_KEY); else one is generated
    and printed once when no admin key exists."""
    auth_cache_ttl: float = 5.0
    """Seconds a verified API key is trusted before the database is read again; a key
    revoked on another replica works here for at most this long. 0 disables."""
    shutdown_grace: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM."""
    reconcile_interval: float = 1.0
    """Seconds between checks for registry changes made through other replicas; changes
    made through this one are published at once."""
    rollout_tick: float = 1.0
    """Seconds between passes of the rollout loop (starts, analyses, steps); each rollout
    is analysed once per its own analysis interval."""
    quota_lease_ttl: float = 30.0
    """Seconds a quota lease lasts unless renewed: after that its rate shares and slots
    go back to the tenant (its unreported USD does not)."""
    quota_refresh: float = 5.0
    """Seconds between executors' renewals of their quota leases."""
    retain_usage_days: float | None = None
    """Days usage ledger rows are kept; None keeps them for ever."""
    retain_runs_days: float | None = None
    """Days the run index keeps a run after it ended; None keeps it for ever."""
    retain_audit_days: float | None = None
    """Days audit records are kept (each chain stays verifiable from the last record
    removed); None keeps them for ever."""
    retention_interval: float = 3600.0
    """Seconds between pruning passes (one replica at a time prunes)."""
    log_level: str = "INFO"
    log_format: str = "json"
    """json (one object per line) or text."""

    @property
    def retention(self) -> RetentionPolicy:
        def age(days: float | None) -> timedelta | None:
            return None if days is None else timedelta(days=days)

        return RetentionPolicy(
            usage=age(self.retain_usage_days),
            runs=age(self.retain_runs_days),
            audit=age(self.retain_audit_days),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="host:port (PILOTHOUSE_LISTEN; default 127.0.0.1:7070)")
    parser.add_argument(
        "--database-url",
        help="sqlite:///file or postgresql://… "
        f"(PILOTHOUSE_DATABASE_URL; default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--tls-cert", help="PEM certificate (PILOTHOUSE_TLS_CERT)")
    parser.add_argument("--tls-key", help="PEM private key (PILOTHOUSE_TLS_KEY)")
    parser.add_argument(
        "--tls-client-ca", help="CA for client certificates: mutual TLS (PILOTHOUSE_TLS_CLIENT_CA)"
    )
    parser.add_argument("--shutdown-grace", type=float, help="seconds (PILOTHOUSE_SHUTDOWN_GRACE)")
    parser.add_argument(
        "--auth-cache-ttl", type=float, help="seconds; 0 disables (PILOTHOUSE_AUTH_CACHE_TTL)"
    )
    parser.add_argument(
        "--quota-lease-ttl", type=float, help="seconds (PILOTHOUSE_QUOTA_LEASE_TTL; default 30)"
    )
    parser.add_argument(
        "--quota-refresh", type=float, help="seconds (PILOTHOUSE_QUOTA_REFRESH; default 5)"
    )
    for kind, what in (
        ("usage", "usage ledger rows"),
        ("runs", "run index entries of ended runs"),
        ("audit", "audit records"),
    ):
        parser.add_argument(
            f"--retain-{kind}-days",
            type=float,
            help=f"keep {what} this many days (PILOTHOUSE_RETAIN_{kind.upper()}_DAYS; "
            "default: for ever)",
        )
    add_common_arguments(parser)


def from_arguments(ns: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Settings:
    flags = Flags(ns, env)
    defaults = Settings()
    cert, key = (
        flags.text("tls_cert", "PILOTHOUSE_TLS_CERT"),
        flags.text("tls_key", "PILOTHOUSE_TLS_KEY"),
    )
    client_ca = flags.text("tls_client_ca", "PILOTHOUSE_TLS_CLIENT_CA")
    if bool(cert) != bool(key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if client_ca and not cert:
        raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
    tls = (
        TlsSettings(Path(cert), Path(key), Path(client_ca) if client_ca else None)
        if cert and key
        else None
    )
    settings = Settings(
        listen=flags.text("listen", "PILOTHOUSE_LISTEN") or defaults.listen,
        database_url=flags.text("database_url", "PILOTHOUSE_DATABASE_URL") or defaults.database_url,
        tls=tls,
        bootstrap_key=env.get("PILOTHOUSE_BOOTSTRAP_KEY") or None,
        shutdown_grace=flags.number(
            "shutdown_grace", "PILOTHOUSE_SHUTDOWN_GRACE", defaults.shutdown_grace
        ),
        auth_cache_ttl=flags.number(
            "auth_cache_ttl", "PILOTHOUSE_AUTH_CACHE_TTL", defaults.auth_cache_ttl
        ),
        quota_lease_ttl=flags.number(
            "quota_lease_ttl", "PILOTHOUSE_QUOTA_LEASE_TTL", defaults.quota_lease_ttl, positive=True
        ),
        quota_refresh=flags.number(
            "quota_refresh", "PILOTHOUSE_QUOTA_REFRESH", defaults.quota_refresh, positive=True
        ),
        retain_usage_days=flags.days("retain_usage_days", "PILOTHOUSE_RETAIN_USAGE_DAYS"),
        retain_runs_days=flags.days("retain_runs_days", "PILOTHOUSE_RETAIN_RUNS_DAYS"),
        retain_audit_days=flags.days("retain_audit_days", "PILOTHOUSE_RETAIN_AUDIT_DAYS"),
        retention_interval=flags.retention_interval(defaults.retention_interval),
        log_level=flags.log_level(defaults.log_level),
        log_format=flags.log_format(defaults.log_format),
    )
    if settings.shutdown_grace < 0 or settings.auth_cache_ttl < 0:
        raise SystemExit("--shutdown-grace and --auth-cache-ttl cannot be negative")
    if not settings.quota_refresh < settings.quota_lease_ttl:
        raise SystemExit("--quota-refresh must be positive and shorter than --quota-lease-ttl")
    return settings
