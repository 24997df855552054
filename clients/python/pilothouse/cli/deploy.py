"""``pilothouse deploy envoy``: the Envoy sidecar configuration of an executor.

pilothouse deploy envoy --control-plane HOST:PORT [--executor-port 50061]
    [--ingress-port 8443] [--egress-port 50052] [--tls-cert F --tls-key F [--client-ca F]]
    [--control-plane-ca F] [--collector HOST:PORT] [--rate-limit N --burst N] [-o FILE]

Needs no server: it writes the bootstrap YAML (to stdout, or the file).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pilothouse.cli.usage import UsageError
from pilothouse.deploy.envoy import Endpoint, Sidecar, Tls, render


def _endpoint(text: str, flag: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def sidecar(ns: argparse.Namespace) -> Sidecar:
    if bool(ns.tls_cert) != bool(ns.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if ns.client_ca and not ns.tls_cert:
        raise UsageError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for flag in ("executor_port", "ingress_port", "egress_port", "admin_port", "health_port"):
        if not 0 < getattr(ns, flag) < 65536 and not (
            flag == "health_port" and ns.health_port == 0
        ):
            raise UsageError(f"--{flag.replace('_', '-')} must be a port from 1 to 65535")
    if ns.rate_limit < 1 or ns.burst < ns.rate_limit:
        raise UsageError("--rate-limit must be at least 1 and --burst at least --rate-limit")
    return Sidecar(
        control_plane=_endpoint(ns.control_plane, "--control-plane"),
        executor_port=ns.executor_port,
        ingress_port=ns.ingress_port,
        egress_port=ns.egress_port,
        admin_port=ns.admin_port,
        health_port=ns.health_port or None,
        tls=Tls(ns.tls_cert, ns.tls_key, ns.client_ca or "") if ns.tls_cert else None,
        control_plane_ca_file=ns.control_plane_ca or "",
        collector=_endpoint(ns.collector, "--collector") if ns.collector else None,
        rate_limit_per_second=ns.rate_limit,
        rate_limit_burst=ns.burst,
    )


def command(ns: argparse.Namespace) -> int:
    text = render(sidecar(ns))
    if ns.out:
        Path(ns.out).write_text(text)
    else:
        print(text, end="")
    return 0


def add_commands(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="deployment configuration")
    targets = deploy.add_subparsers(dest="deploy_command", required=True)
    envoy = targets.add_parser("envoy", help="an executor's Envoy sidecar bootstrap (YAML)")
    envoy.add_argument("--control-plane", required=True, help="HOST:PORT from the executor")
    envoy.add_argument("--executor-port", type=int, default=50061)
    envoy.add_argument("--ingress-port", type=int, default=8443)
    envoy.add_argument("--egress-port", type=int, default=50052)
    envoy.add_argument("--admin-port", type=int, default=9901)
    envoy.add_argument(
        "--health-port", type=int, default=8081, help="plaintext health checks only; 0: none"
    )
    envoy.add_argument("--tls-cert", help="the ingress's certificate chain (a path)")
    envoy.add_argument("--tls-key", help="its private key (a path)")
    envoy.add_argument("--client-ca", help="require client certificates signed by this CA")
    envoy.add_argument("--control-plane-ca", help="TLS to the control plane, with this CA")
    envoy.add_argument("--collector", help="OpenTelemetry Collector HOST:PORT (OTLP/gRPC)")
    envoy.add_argument("--rate-limit", type=int, default=500, help="requests a second (500)")
    envoy.add_argument("--burst", type=int, default=1000, help="bucket size (1000)")
    envoy.add_argument("-o", "--out", help="write to this file instead of stdout")
