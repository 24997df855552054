"""The audit log's hash chain, as the control plane writes it and anyone may check it.

Each record of a chain (one per tenant; "-" for the control plane's own records) has a
sequence number from 1 and a hash: SHA-256, in lowercase hex, of the compact JSON array

    [chain, sequence, time, actor, action, resource, details, event_id, prev_hash]

where ``time`` is ISO 8601 in UTC with microseconds (``2026-12-01T23:27:20.000000Z``),
``event_id`` is "" when there is none, and ``prev_hash`` is the previous record's hash
(64 zeros before the first). Changing, removing or reordering a record breaks every
hash after it; removing records at the end is caught against a head recorded earlier.

Retention may remove a chain's oldest records; the control plane then keeps the last
removed record's sequence and hash, and the chain is checked from the record after it,
whose ``prev_hash`` must be that hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

GENESIS = "0" * 64


def link(
    chain: str,
    sequence: int,
    time: datetime,
    actor: str,
    action: str,
    resource: str,
    details: str,
    event_id: str,
    prev_hash: str,
) -> str:
    """The hash of one record."""
    canonical = json.dumps(
        [
            chain,
            sequence,
            time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            actor,
            action,
            resource,
            details,
            event_id,
            prev_hash,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Record:
    chain: str
    sequence: int
    time: datetime
    actor: str
    action: str
    resource: str
    details: str
    event_id: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Verdict:
    verified: int
    """Records checked in order before the first problem (all of them when intact)."""
    head_sequence: int
    head_hash: str
    broken_at: int = 0
    """The sequence of the first record that does not check out; 0 when none."""
    problem: str = ""
    after_sequence: int = 0
    after_hash: str = GENESIS
    """Where the check began: after the last record retention removed, if any."""

    @property
    def intact(self) -> bool:
        return not self.problem


class Verifier:
    """Checks a chain record by record, in sequence order, without holding it."""

    def __init__(self, after_sequence: int = 0, after_hash: str = GENESIS) -> None:
        """Start after record ``after_sequence`` whose hash is ``after_hash``: the last
        one retention removed, when it removed any."""
        self._after = (after_sequence, after_hash)
        self._expected, self._prev, self._count = after_sequence + 1, after_hash, 0
        self._broken: Verdict | None = None

    def feed(self, r: Record) -> bool:
        """Check the next record; False once the chain is broken (later ones are not
        looked at)."""
        if self._broken is not None:
            return False
        problem = ""
        if r.sequence != self._expected:
            problem = f"record {self._expected} is missing"
        elif r.prev_hash != self._prev:
            problem = "it does not follow the record before"
        elif r.hash != link(
            r.chain,
            r.sequence,
            r.time,
            r.actor,
            r.action,
            r.resource,
            r.details,
            r.event_id,
            r.prev_hash,
        ):
            problem = "its contents do not match its hash"
        if problem:
            self._broken = Verdict(
                self._count, self._expected - 1, self._prev, self._expected, problem, *self._after
            )
            return False
        self._prev, self._expected, self._count = r.hash, self._expected + 1, self._count + 1
        return True

    def verdict(self) -> Verdict:
        return self._broken or Verdict(
            self._count, self._expected - 1, self._prev, 0, "", *self._after
        )


def verify(
    records: Iterable[Record], after_sequence: int = 0, after_hash: str = GENESIS
) -> Verdict:
    """Check a whole chain, given in sequence order (from the record after
    ``after_sequence``, the last pruned, if any was)."""
    verifier = Verifier(after_sequence, after_hash)
    for r in records:
        if not verifier.feed(r):
            break
    return verifier.verdict()
