"""Egress policy: where a tenant's model, HTTP-tool and MCP endpoints may take the executor.

A tenant chooses those endpoints, so without a policy its configuration could point the
executor at its own neighbourhood: the loopback interface (the executor's and the control
plane's ports), link-local addresses (cloud metadata services), private networks. By
default an executor connects only to globally routable addresses. Its operator allows
more with ``--allow-egress`` entries: a CIDR (``10.0.0.0/8``), an address, or a host
name, each optionally with ``:PORT``. The executor's own listening port and the control
plane's addresses stay closed even inside an allowed range, unless an entry names that
exact port.

The host is resolved here and the connection goes to the address that was checked, so a
name cannot resolve to an allowed address for the check and to a forbidden one for the
connection. If any address a name resolves to is forbidden, the name is refused whole.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressDenied(httpx.TransportError):
    """The policy forbids the destination. Never worth retrying."""


@dataclass(frozen=True)
class EgressRule:
    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def matches(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return host.lower().rstrip(".") == self.host
        return self.network is not None and address in self.network

    @classmethod
    def parse(cls, entry: str) -> EgressRule:
        """``CIDR``, ``ADDRESS``, ``HOST``, each optionally ``:PORT`` (an IPv6 address with
        a port in brackets: ``[::1]:8080``)."""
        text = entry.strip()
        port: int | None = None
        target = text
        if text.startswith("["):
            inside, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"--allow-egress {entry!r}: unbalanced brackets")
            target, port_text = inside, rest[1:]
            port = _port(port_text, entry) if rest else None
        elif text.count(":") == 1:
            target, port_text = text.split(":")
            port = _port(port_text, entry)
        if not target:
            raise ValueError(f"--allow-egress {entry!r}: no address or host")
        try:
            return cls(network=ipaddress.ip_network(target, strict=False), port=port)
        except ValueError:
            pass
        host = target.lower().rstrip(".")
        if not all(part and len(part) < 64 for part in host.split(".")) or any(
            not (c.isalnum() or c in "-.") for c in host
        ):
            raise ValueError(
                f"--allow-egress {entry!r}: not a CIDR, an address or a host name"
            ) from None
        return cls(host=host, port=port)


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"--allow-egress {entry!r}: bad port {text[:10]!r}")
    return int(text)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return mapped
    return address


def is_public(address: IPAddress) -> bool:
    """Globally routable, unicast: what any tenant may reach."""
    plain = _unmapped(address)
    return plain.is_global and not plain.is_multicast


@dataclass
class EgressPolicy:
    allow: tuple[EgressRule, ...] = ()
    own_ports: frozenset[int] = frozenset()
    """Ports of this executor (and of its control plane) on local addresses."""
    own_endpoints: set[tuple[IPAddress, int]] = field(default_factory=set)
    """Resolved addresses and ports of the control plane."""

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EgressPolicy:
        return cls(tuple(EgressRule.parse(e) for e in entries if e.strip()))

    def allow_url(self, url: str) -> None:
        """Open the host and port of ``url``: an endpoint the executor's operator chose
        (the default model endpoint), not one a tenant did."""
        parts = httpx.URL(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.allow = (*self.allow, EgressRule.parse(f"[{parts.host}]:{port}"))

    def protect(self, host: str, port: int) -> None:
        """Close ``host:port`` (an address of this executor or its control plane)."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            address = None
        if address is None or not is_public(address):
            self.own_ports = self.own_ports | {port}
        if address is not None:
            self.own_endpoints.add((_unmapped(address), port))

    def check(self, host: str, address: IPAddress, port: int) -> str | None:
        """Why a connection to ``address:port`` (for ``host``) is forbidden, or None."""
        plain = _unmapped(address)
        own = (plain, port) in self.own_endpoints or (
            not is_public(plain) and port in self.own_ports
        )
        explicit = [r for r in self.allow if r.matches(host, plain, port)]
        if own:
            if any(r.port == port for r in explicit):
                return None
            return f"{host}:{port} is this executor's or its control plane's own endpoint"
        if is_public(plain) or explicit:
            return None
        kind = (
            "loopback"
            if plain.is_loopback
            else "link-local"
            if plain.is_link_local
            else "private"
            if plain.is_private
            else "non-public"
        )
        return (
            f"{host}:{port} resolves to {plain}, a {kind} address, and the executor's egress "
            "policy does not allow it (its operator may, with --allow-egress)"
        )

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host:port``, every one of them allowed;
        ``EgressDenied`` otherwise."""
        literal = host.strip("[]")
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(literal)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except OSError as e:
                raise httpx.ConnectError(f"cannot resolve {host}: {e}") from e
            addresses = list(
                dict.fromkeys(
                    ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos
                )
            )
        for address in addresses:
            problem = self.check(host, address, port)
            if problem is not None:
                raise EgressDenied(problem)
        return [str(a) for a in addresses]
