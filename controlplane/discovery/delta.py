"""The Delta xDS protocol as the control plane speaks it on one executor's stream: a state
machine with no gRPC and no database in it, driven by the stream's requests and by the
published configuration, reporting through callbacks (as go-control-plane's server does),
so that every rule is tested with plain values.

The stream watches one resource type, ``TenantConfiguration``: one resource per tenant
the stream's key may see, named ``tenants/{tenant}``, versioned by its content.

* The first request names the node; its ``initial_resource_versions`` say what the
  executor already holds (after a reconnect), so nothing it holds is sent again.
* Each tenant's configuration goes out in a response of its own, with a fresh nonce: one
  tenant's configuration never waits for, nor fails with, another's.
* At most one response per tenant is unanswered at a time; a newer version of that tenant
  waits for the answer to the older one.
* An ACK (an outstanding response's nonce, no error) records that the executor holds that
  version. A NACK (with ``error_detail``) records the version as rejected by that node; it
  is never sent to that node again, and the executor keeps what it had.
* A request whose nonce is not that of an outstanding response is stale and ignored.
* A tenant the stream may no longer see (deleted, or no longer visible) is removed with a
  response naming it in ``removed_resources``.
* After the first responses of a stream comes one with no resources and no removals:
  the end of the initial state. Its ``system_version_info`` is the version of everything
  the stream may see, and an executor that has it holds its whole configuration (so it
  may report itself ready to serve).
* Nothing is sent when nothing changed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pilothouse.configuration import combined_version, resource_name, tenant_of


class ProtocolError(Exception):
    """The client broke the protocol; the stream ends with INVALID_ARGUMENT."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Request:
    """What the state machine reads of a DeltaDiscoveryRequest."""

    type_url: str
    node_id: str = ""
    cluster: str = ""
    response_nonce: str = ""
    error: str | None = None
    """The NACK's error_detail message; None for an ACK or a first request."""
    initial_versions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    """A response to send: one tenant's configuration at a version, or removals."""

    nonce: str
    tenant: str | None = None
    version: str = ""
    removed: tuple[str, ...] = ()
    initial_state_sent: bool = False
    """The marker that ends the stream's initial state (no resources, no removals)."""


class Callbacks(Protocol):
    def acked(self, node: str, version: str) -> None:
        """The node now holds every tenant of its view at these versions (combined)."""

    def nacked(self, node: str, resource: str, version: str, error: str) -> None:
        """The node rejected ``resource`` at ``version``."""


def rejection(resource: str, version: str) -> str:
    """How a rejected version of a resource is remembered per node."""
    return f"{resource}@{version}"


@dataclass
class DeltaSession:
    type_url: str
    callbacks: Callbacks
    nonce: Callable[[], str] = field(default=lambda: secrets.token_hex(8))
    node: str = ""
    rejected: set[str] = field(default_factory=set)
    """``resource@version`` the node rejected, on this stream or before."""
    held: dict[str, str] = field(default_factory=dict)
    """Resource name → the version the executor holds (acknowledged, or declared)."""
    outstanding: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """Nonce → (resource, version sent; None for a removal), awaiting an answer."""
    _reported: str | None = None
    _answered: bool = False
    _initial_sent: bool = False

    def open(self, request: Request, rejected: set[str]) -> None:
        """The stream's first request; ``rejected``: what the node rejected before."""
        if not request.node_id:
            raise ProtocolError("node.id", "the first request must name its node")
        self._check_type(request)
        self.node = request.node_id
        self.rejected = set(rejected)
        self.held = {name: version for name, version in request.initial_versions.items() if version}
        self._answered = bool(self.held)

    def receive(self, request: Request) -> None:
        self._check_type(request)
        sent = self.outstanding.pop(request.response_nonce, None)
        if sent is None:
            return  # a first request again, or an answer to a response we no longer await
        resource, version = sent
        if request.error is not None:
            if version is not None:
                self.rejected.add(rejection(resource, version))
                self.callbacks.nacked(self.node, resource, version, request.error)
            return
        self._answered = True
        if not resource:
            return  # the end of the initial state, acknowledged
        if version is None:
            self.held.pop(resource, None)
        else:
            self.held[resource] = version

    def due(self, available: Mapping[str, str]) -> list[Response]:
        """The responses to send now, given the configuration the stream may see
        (tenant id → version)."""
        busy = {resource for resource, _ in self.outstanding.values()}
        responses = []
        for tenant, version in sorted(available.items()):
            name = resource_name(tenant)
            if (
                name in busy
                or self.held.get(name) == version
                or rejection(name, version) in self.rejected
            ):
                continue
            response = Response(self.nonce(), tenant=tenant, version=version)
            self.outstanding[response.nonce] = (name, version)
            responses.append(response)
        wanted = {resource_name(tenant) for tenant in available}
        for name in sorted(set(self.held) - wanted - busy):
            response = Response(self.nonce(), removed=(name,))
            self.outstanding[response.nonce] = (name, None)
            responses.append(response)
        if not self._initial_sent:
            self._initial_sent = True
            marker = Response(self.nonce(), initial_state_sent=True)
            self.outstanding[marker.nonce] = ("", None)
            responses.append(marker)
        return responses

    def report(self) -> None:
        """Tell the callbacks the combined version held, when it changed (and once the
        executor has said what it holds)."""
        if not self._answered:
            return
        versions = {}
        for name, version in self.held.items():
            tenant = tenant_of(name)
            if tenant is not None:
                versions[tenant] = version
        combined = combined_version(versions)
        if combined != self._reported:
            self._reported = combined
            self.callbacks.acked(self.node, combined)

    def _check_type(self, request: Request) -> None:
        if request.type_url != self.type_url:
            raise ProtocolError(
                "type_url", f"{request.type_url[:200]!r} is not served; watch {self.type_url}"
            )
