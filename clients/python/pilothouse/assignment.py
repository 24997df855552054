"""Which variant of a rollout a run gets: sticky, monotone, and the same in every
language (docs/rollouts.md specifies it, with test vectors every client checks).

    bucket(rollout, key) = big-endian uint64 of the first 8 bytes of
                           SHA-256(UTF-8(rollout) ‖ 0x00 ‖ UTF-8(key)), modulo 10,000
    candidate  ⇔  bucket < weight, the candidate's weight in basis points (0 to 10,000)

A unit (a session, a user or a tenant, as the rollout chooses) always lands in the same
bucket of a rollout, so it keeps its variant while the weight stays; and since raising
the weight only adds buckets below it, no unit ever leaves the candidate when the weight
goes up.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

BUCKETS = 10_000


class Stickiness(StrEnum):
    """What a run's unit is: its session (else its user, else the run itself), its user
    (else the run itself), or its tenant."""

    SESSION = "session"
    USER = "user"
    TENANT = "tenant"


def unit_key(
    stickiness: Stickiness, *, tenant: str, user: str = "", session: str = "", run: str = ""
) -> str:
    """The stickiness key of a run: the first of session, user and the run's own id that
    the rollout's stickiness allows and the run has (a run with neither id is a unit of
    its own, so sessionless traffic splits by the weight), or its tenant under tenant
    stickiness; each prefixed with what it is."""
    if stickiness is Stickiness.TENANT:
        return f"tenant:{tenant}"
    if stickiness is Stickiness.SESSION and session:
        return f"session:{session}"
    if user:
        return f"user:{user}"
    if run:
        return f"run:{run}"
    return f"tenant:{tenant}"


def bucket(rollout: str, key: str) -> int:
    digest = hashlib.sha256(rollout.encode() + b"\x00" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_candidate(rollout: str, key: str, weight: int) -> bool:
    """Whether the unit ``key`` runs the candidate at ``weight`` basis points."""
    if not 0 <= weight <= BUCKETS:
        raise ValueError(f"weight {weight} is not 0 to {BUCKETS} basis points")
    return bucket(rollout, key) < weight
