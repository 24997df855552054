"""Checkpoints: what each step of a run added, written fenced with the run's usage and
events, and (when given) the journal entry of the step's last call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from dataplane import fastjson
from dataplane.runstore.fencing import Fenced, fence
from dataplane.runstore.journal import write_call
from dataplane.runstore.model import (
    CallEntry,
    Lease,
    NewEvent,
    StepCheckpoint,
    UnsettledModelCall,
)
from dataplane.runstore.rows import now
from dataplane.runstore.schema import checkpoints
from storekit import prepared

_INSERT_CHECKPOINT = checkpoints.insert()


@dataclass(frozen=True)
class EncodedCheckpoint:
    """Checkpoints ready to write together: their texts encoded and their times fixed.
    ``steps`` and ``delta_texts`` have one entry per checkpoint; the run's step and usage
    become the last one's; ``events`` are all of theirs, in order."""

    lease: Lease
    steps: tuple[int, ...]
    delta_texts: tuple[str, ...]
    usage_text: str
    events: Sequence[NewEvent]
    call: CallEntry | None
    at: datetime
    expires: datetime
    model_call: str = ""
    """The run's model call in flight once this is written (``Run.model_call``)."""

    def params(self) -> dict[str, Any]:
        """The parameters PostgreSQL's one-statement checkpoint and end share."""
        return {
            "n_checkpoints": len(self.steps),
            "cp_steps": list(self.steps),
            "cp_deltas": list(self.delta_texts),
            "step": self.steps[-1],
            "usage": self.usage_text,
            "model_call": self.model_call,
        }


NO_CHECKPOINT = {"n_checkpoints": 0, "cp_steps": [], "cp_deltas": [], "step": 0, "usage": ""}


def encode(
    lease: Lease,
    parts: Sequence[StepCheckpoint],
    lease_ttl: timedelta,
    call: CallEntry | None = None,
    model_call: UnsettledModelCall | None = None,
) -> EncodedCheckpoint:
    at = now()
    return EncodedCheckpoint(
        lease,
        tuple(c.step for c in parts),
        tuple(fastjson.dumps_text(c.delta, sort_keys=True) for c in parts),
        fastjson.dumps_text(parts[-1].usage, sort_keys=True),
        [e for c in parts for e in c.events],
        call,
        at,
        at + lease_ttl,
        model_call.text() if model_call is not None else "",
    )


def insert_checkpoint(
    conn: Connection, run_id: str, seq: int, step: int, token: int, delta_text: str, at: datetime
) -> None:
    prepared.run(
        conn,
        _INSERT_CHECKPOINT,
        {
            "run_id": run_id,
            "seq": seq,
            "step": step,
            "fencing_token": token,
            "delta": delta_text,
            "created_at": at,
        },
    )


def write_checkpoint(conn: Connection, cp: EncodedCheckpoint) -> Fenced:
    """``cp`` in a transaction of several statements."""
    fenced = fence(
        conn,
        cp.lease,
        events=cp.events,
        checkpoints=len(cp.steps),
        at=cp.at,
        step=cp.steps[-1],
        usage=cp.usage_text,
        model_call=cp.model_call,
        lease_expires_at=cp.expires,
        updated_at=cp.at,
    )
    for i, (step, delta_text) in enumerate(zip(cp.steps, cp.delta_texts, strict=True)):
        insert_checkpoint(
            conn,
            cp.lease.run_id,
            fenced.checkpoint_seq + i,
            step,
            cp.lease.token,
            delta_text,
            cp.at,
        )
    if cp.call is not None:
        write_call(conn, cp.lease.run_id, cp.call, cp.at)
    return fenced
