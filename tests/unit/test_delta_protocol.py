"""The control plane's Delta xDS rules, driven with plain values: no server, no network,
no clock (as go-control-plane tests its server with a mock stream)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from controlplane.discovery.delta import DeltaSession, ProtocolError, Request, Response
from pilothouse.configuration import TENANT_CONFIGURATION_URL, combined_version

URL = TENANT_CONFIGURATION_URL


@dataclass
class Recorded:
    acks: list[tuple[str, str]] = field(default_factory=list)
    nacks: list[tuple[str, str, str, str]] = field(default_factory=list)

    def acked(self, node: str, version: str) -> None:
        self.acks.append((node, version))

    def nacked(self, node: str, resource: str, version: str, error: str) -> None:
        self.nacks.append((node, resource, version, error))


def session(
    initial: dict[str, str] | None = None, rejected: set[str] | None = None
) -> tuple[DeltaSession, Recorded]:
    counter = itertools.count()
    recorded = Recorded()
    s = DeltaSession(URL, recorded, nonce=lambda: f"n{next(counter)}")
    s.open(Request(URL, node_id="node-1", initial_versions=initial or {}), rejected or set())
    return s, recorded


def ack(s: DeltaSession, response: Response) -> None:
    s.receive(Request(URL, response_nonce=response.nonce))


def first(s: DeltaSession, available: dict[str, str]) -> list[Response]:
    """The stream's first responses, whose last marks the end of its initial state
    (acknowledged here); the others."""
    due = s.due(available)
    assert due and due[-1].initial_state_sent and due[-1].tenant is None and not due[-1].removed
    ack(s, due[-1])
    return due[:-1]


def test_each_tenant_goes_in_a_response_of_its_own() -> None:
    s, recorded = session()
    due = s.due({"a": "1", "b": "1"})
    assert [(r.tenant, r.version) for r in due[:2]] == [("a", "1"), ("b", "1")]
    assert due[2].initial_state_sent and len({r.nonce for r in due}) == 3
    s.report()
    assert recorded.acks == [], "nothing is reported before the executor answers"
    for response in due:
        ack(s, response)
    s.report()
    assert recorded.acks == [("node-1", combined_version({"a": "1", "b": "1"}))]
    assert s.due({"a": "1", "b": "1"}) == [], "the end of the initial state is sent once"


def test_nothing_is_sent_when_nothing_changed() -> None:
    s, _ = session()
    for response in first(s, {"a": "1"}):
        ack(s, response)
    assert s.due({"a": "1"}) == []


def test_a_change_sends_only_the_tenant_that_changed() -> None:
    s, _ = session()
    for response in first(s, {"a": "1", "b": "1"}):
        ack(s, response)
    (changed,) = s.due({"a": "1", "b": "2"})
    assert (changed.tenant, changed.version) == ("b", "2")


def test_a_newer_version_waits_for_the_answer_to_the_older() -> None:
    s, _ = session()
    (older,) = first(s, {"a": "1"})
    assert s.due({"a": "2"}) == [], "one unanswered response per tenant"
    ack(s, older)
    (second,) = s.due({"a": "2"})
    assert second.version == "2"


def test_a_nack_is_reported_never_resent_and_holds_back_no_one_else() -> None:
    s, recorded = session()
    a, b = first(s, {"a": "1", "b": "1"})
    s.receive(Request(URL, response_nonce=a.nonce, error="bad schema"))
    ack(s, b)
    assert recorded.nacks == [("node-1", "tenants/a", "1", "bad schema")]
    assert s.due({"a": "1", "b": "1"}) == []
    (fixed,) = s.due({"a": "2", "b": "1"})
    assert (fixed.tenant, fixed.version) == ("a", "2")
    s.report()
    assert recorded.acks[-1] == ("node-1", combined_version({"b": "1"}))


def test_versions_rejected_before_are_not_offered_again() -> None:
    s, _ = session(rejected={"tenants/a@1"})
    assert [r.tenant for r in first(s, {"a": "1", "b": "1"})] == ["b"]


def test_a_reconnecting_executor_is_sent_only_what_it_lacks() -> None:
    s, recorded = session(initial={"tenants/a": "1", "tenants/b": "1", "tenants/gone": "7"})
    due = first(s, {"a": "1", "b": "2"})
    assert [(r.tenant, r.version, r.removed) for r in due] == [
        ("b", "2", ()),
        (None, "", ("tenants/gone",)),
    ]
    for response in due:
        ack(s, response)
    s.report()
    assert recorded.acks[-1] == ("node-1", combined_version({"a": "1", "b": "2"}))


def test_a_tenant_that_leaves_the_view_is_removed() -> None:
    s, _ = session()
    for response in first(s, {"a": "1", "b": "1"}):
        ack(s, response)
    (removal,) = s.due({"a": "1"})
    assert removal.removed == ("tenants/b",)
    ack(s, removal)
    assert s.held == {"tenants/a": "1"}


def test_stale_nonces_are_ignored() -> None:
    s, recorded = session()
    (response,) = first(s, {"a": "1"})
    s.receive(Request(URL, response_nonce="not-a-nonce", error="ignored"))
    assert recorded.nacks == [] and response.nonce in s.outstanding
    ack(s, response)
    ack(s, response)  # answered twice: the second is stale
    assert s.held == {"tenants/a": "1"}


def test_protocol_errors_name_the_field() -> None:
    s = DeltaSession(URL, Recorded())
    with pytest.raises(ProtocolError) as missing:
        s.open(Request(URL), set())
    assert missing.value.field == "node.id"
    with pytest.raises(ProtocolError) as wrong:
        s.open(Request("type.googleapis.com/pilothouse.v1.Tool", node_id="n"), set())
    assert wrong.value.field == "type_url"
