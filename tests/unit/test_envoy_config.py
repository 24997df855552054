"""The generated Envoy sidecar configuration parses into Envoy's own Bootstrap message,
every typed_config resolved to its real type: an unknown field or a wrong type fails."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2

# Importing the extensions registers their messages, so that each Any resolves.
from envoy.config.trace.v3 import opentelemetry_pb2  # noqa: F401
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.health_check.v3 import health_check_pb2  # noqa: F401
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from pilothouse.deploy.envoy import Endpoint, Sidecar, Tls, bootstrap, render

CP = Endpoint("pilothouse-control-plane", 50051)
SIDECARS = {
    "plain": Sidecar(CP),
    "tls": Sidecar(CP, tls=Tls("/etc/envoy/tls.crt", "/etc/envoy/tls.key")),
    "mtls-traced": Sidecar(
        CP,
        tls=Tls("/etc/envoy/tls.crt", "/etc/envoy/tls.key", "/etc/envoy/ca.crt"),
        control_plane_ca_file="/etc/envoy/cp-ca.crt",
        collector=Endpoint("otel-collector", 4317),
    ),
}


def parsed(data: dict[str, Any]) -> bootstrap_pb2.Bootstrap:
    return json_format.ParseDict(data, bootstrap_pb2.Bootstrap())


def anys(message: Message) -> list[any_pb2.Any]:
    """Every Any inside ``message``, nested ones too."""
    found: list[any_pb2.Any] = []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = [v for v in value.values() if isinstance(v, Message)]
        elif isinstance(value, Message):
            values = [value]
        else:
            values = list(value)
        for item in values:
            if isinstance(item, any_pb2.Any):
                found.append(item)
            else:
                found += anys(item)
    return found


@pytest.mark.parametrize("name", sorted(SIDECARS))
def test_the_sidecar_parses_into_envoys_bootstrap(name: str) -> None:
    config = parsed(yaml.safe_load(render(SIDECARS[name])))
    typed = anys(config)
    assert typed, "no typed_config at all"
    for value in typed:
        # Each resolves to a registered message type (ParseDict did so, or failed).
        assert value.TypeName(), value
    listeners = {lis.name: lis for lis in config.static_resources.listeners}
    assert set(listeners) == {"ingress", "egress_control_plane", "health"}
    clusters = {c.name: c for c in config.static_resources.clusters}
    expected = {"executor", "control_plane"} | (
        {"otel_collector"} if name == "mtls-traced" else set()
    )
    assert set(clusters) == expected


def test_the_ingress_follows_grpc_deadlines_and_passes_health_checks_through() -> None:
    config = parsed(bootstrap(SIDECARS["mtls-traced"]))
    ingress = next(x for x in config.static_resources.listeners if x.name == "ingress")
    chain = ingress.filter_chains[0]
    manager = hcm_pb2.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(manager)
    assert manager.codec_type == hcm_pb2.HttpConnectionManager.HTTP2
    routes = manager.route_config.virtual_hosts[0].routes
    run_agent = next(r for r in routes if r.match.path.endswith("/RunAgent"))
    assert run_agent.route.timeout.ToSeconds() == 0  # no fixed cut of a streaming call
    assert run_agent.route.max_stream_duration.grpc_timeout_header_max.ToSeconds() == 3600
    assert routes[-1].route.max_stream_duration.grpc_timeout_header_max.ToSeconds() == 60
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.health_check",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]
    assert manager.tracing.provider.name == "envoy.tracers.opentelemetry"
    limit = local_rate_limit_pb2.LocalRateLimit()
    manager.http_filters[1].typed_config.Unpack(limit)
    assert limit.rate_limited_as_resource_exhausted
    assert (limit.token_bucket.max_tokens, limit.token_bucket.tokens_per_fill.value) == (1000, 500)
    tls = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(tls)
    assert tls.require_client_certificate.value
    assert tls.common_tls_context.validation_context.trusted_ca.filename == "/etc/envoy/ca.crt"


def test_the_egress_retries_only_unavailable_behind_circuit_breakers() -> None:
    config = parsed(bootstrap(SIDECARS["plain"]))
    egress = next(x for x in config.static_resources.listeners if x.name.startswith("egress"))
    manager = hcm_pb2.HttpConnectionManager()
    egress.filter_chains[0].filters[0].typed_config.Unpack(manager)
    retry = manager.route_config.virtual_hosts[0].routes[0].route.retry_policy
    assert retry.retry_on == "unavailable" and retry.num_retries.value == 3
    cluster = next(c for c in config.static_resources.clusters if c.name == "control_plane")
    assert cluster.health_checks[0].HasField("grpc_health_check")
    assert cluster.circuit_breakers.thresholds[0].max_retries.value == 3
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "pilothouse-control-plane",
        50051,
    )


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["static_resources"]["clusters"][0].update(conect_timeout="1s"),
        lambda d: d["admin"]["address"]["socket_address"].update(port_value="nine"),
        lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"
        ].update(codec_typ="HTTP2"),
        lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"
        ].update({"@type": "type.googleapis.com/envoy.NoSuchFilter"}),
    ],
)
def test_a_mistake_in_the_configuration_fails_to_parse(break_it: Any) -> None:
    data = bootstrap(SIDECARS["plain"])
    break_it(data)
    with pytest.raises(json_format.ParseError):
        parsed(data)


def test_an_endpoint_is_host_and_port() -> None:
    assert Endpoint.parse("cp.pilothouse.svc:50051") == Endpoint("cp.pilothouse.svc", 50051)
    assert Endpoint.parse("[::1]:8443") == Endpoint("::1", 8443)
    for bad in ("cp", "cp:", "cp:http", ":50051", "cp:70000"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad)


def test_the_cli_writes_the_same_configuration(tmp_path: Any) -> None:
    out = tmp_path / "envoy.yaml"
    flags = ["--control-plane", "pilothouse-control-plane:50051", "--collector", "otel:4317"]
    tls = ["--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--client-ca", "/ca.pem"]
    done = subprocess.run(
        [sys.executable, "-m", "pilothouse.cli", "deploy", "envoy", *flags, *tls, "-o", str(out)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")},
    )
    assert done.returncode == 0, done.stderr
    expected = Sidecar(CP, tls=Tls("/c.pem", "/k.pem", "/ca.pem"), collector=Endpoint("otel", 4317))
    assert out.read_text() == render(expected)
    parsed(yaml.safe_load(out.read_text()))
    refused = subprocess.run(
        [sys.executable, "-m", "pilothouse.cli", "deploy", "envoy", *flags, "--client-ca", "/ca"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "--client-ca" in refused.stderr
