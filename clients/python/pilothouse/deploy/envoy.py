"""The Envoy sidecar of an executor, as an Envoy bootstrap (v3) written in YAML.

Three listeners and their clusters:

* **ingress**: callers reach the executor's gRPC port through Envoy: HTTP/2 (TLS or
  mutual TLS when given certificates), the gRPC health check passed through to the
  executor, a local token-bucket rate limit, JSON access logs on stdout, OpenTelemetry
  tracing to the collector when one is named, and per-route stream limits that follow
  each call's ``grpc-timeout`` (capped) instead of cutting long streams at a fixed time;
* **egress**: the executor reaches the control plane through a local port: HTTP/2 to
  the control plane's cluster, with active gRPC health checks, circuit breakers, and
  retries for UNAVAILABLE only (the one status that says the call did not happen);
* **health** (optional): plaintext, the gRPC health check only, for probes that cannot
  speak TLS.

``bootstrap()`` builds the configuration as plain data; ``render()`` writes it as YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
LOCAL_RATE_LIMIT = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

HEALTH_PATH = "/grpc.health.v1.Health/Check"
STREAMING_METHODS = (
    "/pilothouse.v1.AgentService/RunAgent",
    "/pilothouse.v1.AgentService/WatchRun",
    "/pilothouse.v1.AgentService/RunEvalCase",
)
"""Calls that last as long as a run: their streams may run to the longer cap."""

ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "downstream": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
}


@dataclass(frozen=True)
class Tls:
    """Certificate files as Envoy reads them (paths inside its container)."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""
    """Set: mutual TLS, a client certificate signed by this CA is required."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]"), int(port))


@dataclass(frozen=True)
class Sidecar:
    control_plane: Endpoint
    """Where the control plane is, from the executor's pod (a Service name, say)."""
    executor_port: int = 50061
    """The executor's own gRPC port, on 127.0.0.1."""
    ingress_port: int = 8443
    egress_port: int = 50052
    """The local port the executor dials for the control plane."""
    admin_port: int = 9901
    health_port: int | None = 8081
    """A plaintext listener that passes only the gRPC health check through to the
    executor: for probes that cannot speak TLS (Kubernetes' gRPC probes). None: none."""
    tls: Tls | None = None
    control_plane_ca_file: str = ""
    """Set: TLS to the control plane, verified against this CA."""
    collector: Endpoint | None = None
    """An OpenTelemetry Collector (OTLP/gRPC) to send traces to."""
    service_name: str = "pilothouse-executor"
    rate_limit_per_second: int = 500
    rate_limit_burst: int = 1000
    unary_timeout_seconds: int = 60
    """The cap on a call's grpc-timeout, and its limit when it sends none."""
    stream_timeout_seconds: int = 3600
    """The same for the streams of ``STREAMING_METHODS``."""
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 4096
    max_retries: int = 3


def bootstrap(s: Sidecar) -> dict[str, Any]:
    """The sidecar's whole bootstrap, as data that parses into Envoy's
    ``envoy.config.bootstrap.v3.Bootstrap``."""
    clusters = [_executor_cluster(s), _control_plane_cluster(s)]
    if s.collector is not None:
        clusters.append(_collector_cluster(s.collector))
    return {
        "node": {"cluster": s.service_name, "id": f"{s.service_name}-sidecar"},
        "admin": {"address": _address("127.0.0.1", s.admin_port)},
        "static_resources": {
            "listeners": [
                _ingress(s),
                _egress(s),
                *([_health(s.health_port)] if s.health_port is not None else []),
            ],
            "clusters": clusters,
        },
    }


def render(s: Sidecar) -> str:
    return yaml.safe_dump(bootstrap(s), sort_keys=False)


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _seconds(n: int | float) -> str:
    return f"{n}s"


def _stream_limit(seconds: int) -> dict[str, Any]:
    """A stream lasts as its caller's grpc-timeout says, at most ``seconds``; without one,
    ``seconds``. No fixed route timeout: it would cut a server stream mid-run."""
    return {
        "timeout": "0s",
        "max_stream_duration": {
            "max_stream_duration": _seconds(seconds),
            "grpc_timeout_header_max": _seconds(seconds),
        },
    }


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": STDOUT_LOG,
                "log_format": {"json_format": ACCESS_LOG_FORMAT},
            },
        }
    ]


def _ingress(s: Sidecar) -> dict[str, Any]:
    routes = [
        {
            "match": {"path": path, "grpc": {}},
            "route": {"cluster": "executor", **_stream_limit(s.stream_timeout_seconds)},
        }
        for path in STREAMING_METHODS
    ]
    routes.append(
        {
            "match": {"prefix": "/", "grpc": {}},
            "route": {"cluster": "executor", **_stream_limit(s.unary_timeout_seconds)},
        }
    )
    manager: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "codec_type": "HTTP2",
        "generate_request_id": True,
        "access_log": _access_log(),
        "route_config": {
            "name": "executor",
            "virtual_hosts": [{"name": "executor", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": HEALTH_CHECK,
                    "pass_through_mode": True,
                    "headers": [{"name": ":path", "string_match": {"exact": HEALTH_PATH}}],
                },
            },
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": LOCAL_RATE_LIMIT,
                    "stat_prefix": "ingress_rate_limit",
                    "token_bucket": {
                        "max_tokens": s.rate_limit_burst,
                        "tokens_per_fill": s.rate_limit_per_second,
                        "fill_interval": "1s",
                    },
                    "filter_enabled": _all_requests("local_rate_limit_enabled"),
                    "filter_enforced": _all_requests("local_rate_limit_enforced"),
                    # A refused gRPC call ends RESOURCE_EXHAUSTED, which clients back off
                    # on, rather than UNAVAILABLE, which they retry at once.
                    "rate_limited_as_resource_exhausted": True,
                    "response_headers_to_add": [
                        {
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            "header": {"key": "x-local-rate-limit", "value": "true"},
                        }
                    ],
                },
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    if s.collector is not None:
        manager["tracing"] = {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": OTEL_TRACER,
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": "otel_collector"},
                        "timeout": "1s",
                    },
                    "service_name": s.service_name,
                },
            },
            "random_sampling": {"value": 100.0},
        }
    listener: dict[str, Any] = {
        "name": "ingress",
        "address": _address("0.0.0.0", s.ingress_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    if s.tls is not None:
        listener["filter_chains"][0]["transport_socket"] = _downstream_tls(s.tls)
    return listener


def _health(port: int) -> dict[str, Any]:
    manager = {
        "@type": HCM,
        "stat_prefix": "health",
        "codec_type": "HTTP2",
        "route_config": {
            "name": "health",
            "virtual_hosts": [
                {
                    "name": "health",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"path": HEALTH_PATH, "grpc": {}},
                            "route": {"cluster": "executor", "timeout": "2s"},
                        },
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": "health",
        "address": _address("0.0.0.0", port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _all_requests(runtime_key: str) -> dict[str, Any]:
    return {
        "runtime_key": runtime_key,
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    }


def _downstream_tls(tls: Tls) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": tls.cert_file},
                "private_key": {"filename": tls.key_file},
            }
        ],
        "alpn_protocols": ["h2"],
    }
    context: dict[str, Any] = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    if tls.client_ca_file:
        common["validation_context"] = {"trusted_ca": {"filename": tls.client_ca_file}}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _egress(s: Sidecar) -> dict[str, Any]:
    manager = {
        "@type": HCM,
        "stat_prefix": "egress_control_plane",
        "codec_type": "HTTP2",
        "access_log": _access_log(),
        "route_config": {
            "name": "control_plane",
            "virtual_hosts": [
                {
                    "name": "control_plane",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": "control_plane",
                                # The configuration stream (ADS) lasts as long as the
                                # executor: no limit but the caller's own deadline.
                                "timeout": "0s",
                                "retry_policy": {
                                    "retry_on": "unavailable",
                                    "num_retries": s.max_retries,
                                    "retry_back_off": {
                                        "base_interval": "0.1s",
                                        "max_interval": "2s",
                                    },
                                },
                            },
                        }
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "name": "egress_control_plane",
        "address": _address("127.0.0.1", s.egress_port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _http2() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def _endpoints(name: str, host: str, port: int) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}],
    }


def _executor_cluster(s: Sidecar) -> dict[str, Any]:
    return {
        "name": "executor",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _http2(),
        "load_assignment": _endpoints("executor", "127.0.0.1", s.executor_port),
    }


def _control_plane_cluster(s: Sidecar) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": "control_plane",
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "lb_policy": "ROUND_ROBIN",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": _http2(),
        "load_assignment": _endpoints("control_plane", s.control_plane.host, s.control_plane.port),
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "5s",
                "unhealthy_threshold": 3,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": s.max_connections,
                    "max_pending_requests": s.max_pending_requests,
                    "max_requests": s.max_requests,
                    "max_retries": s.max_retries,
                }
            ]
        },
    }
    if s.control_plane_ca_file:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS,
                "sni": s.control_plane.host,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {"trusted_ca": {"filename": s.control_plane_ca_file}},
                },
            },
        }
    return cluster


def _collector_cluster(collector: Endpoint) -> dict[str, Any]:
    return {
        "name": "otel_collector",
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _http2(),
        "load_assignment": _endpoints("otel_collector", collector.host, collector.port),
    }
