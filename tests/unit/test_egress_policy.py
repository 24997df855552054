"""The executor's egress policy: which destinations tenants' endpoints may reach."""

from __future__ import annotations

import ipaddress

import pytest

from dataplane.egress import EgressDenied, EgressPolicy, EgressRule
from dataplane.server import control_plane_endpoints


def allowed(policy: EgressPolicy, address: str, port: int = 443, host: str = "") -> bool:
    return policy.check(host or address, ipaddress.ip_address(address), port) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "fd00::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",  # loopback mapped into IPv6
        "::ffff:169.254.169.254",
        "2002:a9fe:a9fe::1",  # 6to4 wrapping of 169.254.169.254
        "224.0.0.1",
    ],
)
def test_nothing_but_public_addresses_by_default(address: str) -> None:
    assert not allowed(EgressPolicy(), address)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::6810:85e5"])
def test_public_addresses_are_reachable(address: str) -> None:
    assert allowed(EgressPolicy(), address)


def test_the_operator_opens_ranges_addresses_hosts_and_ports() -> None:
    policy = EgressPolicy.from_entries(["10.0.0.0/8", "127.0.0.1:8089", "vllm.internal", "[::1]:9"])
    assert allowed(policy, "10.9.9.9", 80)
    assert allowed(policy, "127.0.0.1", 8089)
    assert not allowed(policy, "127.0.0.1", 8090)
    assert not allowed(policy, "127.0.0.2", 8089)
    assert allowed(policy, "192.168.0.7", 8000, host="vllm.internal")
    assert not allowed(policy, "192.168.0.7", 8000, host="other.internal")
    assert allowed(policy, "::1", 9) and not allowed(policy, "::1", 10)
    assert not allowed(policy, "169.254.169.254", 80)


def test_the_executors_and_control_planes_own_ports_stay_closed() -> None:
    policy = EgressPolicy.from_entries(["127.0.0.1"])
    policy.protect("0.0.0.0", 7071)  # the executor listens on every interface
    for host, port in control_plane_endpoints("ipv4:127.0.0.1:7070,10.0.0.5:7070"):
        policy.protect(host, port)
    assert allowed(policy, "127.0.0.1", 8080)
    assert not allowed(policy, "127.0.0.1", 7071)
    assert not allowed(policy, "127.0.0.1", 7070)
    # Only an entry naming the exact port opens one of them.
    opened = EgressPolicy.from_entries(["127.0.0.1", "127.0.0.1:7070"])
    opened.protect("127.0.0.1", 7070)
    assert allowed(opened, "127.0.0.1", 7070)


@pytest.mark.parametrize("entry", ["", "10.0.0.0/33", "host name", "a:b", "[::1", "h:99999"])
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        EgressPolicy.from_entries([entry or ":"])


async def test_names_are_resolved_and_refused_whole() -> None:
    with pytest.raises(EgressDenied, match="loopback"):
        await EgressPolicy().resolve("localhost", 80)
    assert await EgressPolicy.from_entries(["127.0.0.0/8", "::1"]).resolve("localhost", 80)


def test_control_plane_targets() -> None:
    assert control_plane_endpoints("127.0.0.1:7070") == [("127.0.0.1", 7070)]
    assert control_plane_endpoints("dns:///cp.svc:7070") == [("cp.svc", 7070)]
    assert control_plane_endpoints("ipv6:[::1]:7070,[::2]:7071") == [("::1", 7070), ("::2", 7071)]
    assert EgressRule.parse("[::1]:9") == EgressRule(ipaddress.ip_network("::1/128"), port=9)
