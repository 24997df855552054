"""The run store's writes on SQLite: each a transaction of several statements, run on the
database's writer thread (a statement on a local file costs microseconds)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from dataplane import fastjson
from dataplane.runstore.checkpoints import EncodedCheckpoint, insert_checkpoint, write_checkpoint
from dataplane.runstore.fencing import Fenced, insert_events, insert_outbox
from dataplane.runstore.lifecycle import End, finish_held
from dataplane.runstore.model import Lease, RunState, StepCheckpoint
from dataplane.runstore.rows import now, queued_record
from dataplane.runstore.schema import runs
from dataplane.runstore.writer import Writer
from storekit import prepared

_INSERT_RUN = runs.insert()


class SqliteWrites:
    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    async def create(self, values: dict[str, Any], opening: StepCheckpoint | None) -> None:
        await self._writer.write(lambda conn: _insert_run(conn, values, opening))

    async def checkpoint(self, cp: EncodedCheckpoint) -> Fenced:
        return await self._writer.write(lambda conn: write_checkpoint(conn, cp))

    async def finish(self, lease: Lease, end: End, last: EncodedCheckpoint | None) -> None:
        at = last.at if last is not None else now()
        await self._writer.write(lambda conn: finish_held(conn, lease, end, last, at))


def _insert_run(conn: Connection, values: dict[str, Any], opening: StepCheckpoint | None) -> None:
    prepared.run(conn, _INSERT_RUN, values)
    if values["state"] == RunState.QUEUED.value:
        insert_outbox(conn, queued_record(values))
    if opening is None:
        return
    run_id, at = values["id"], values["created_at"]
    delta = fastjson.dumps_text(opening.delta, sort_keys=True)
    insert_checkpoint(conn, run_id, 1, opening.step, 1, delta, at)
    insert_events(conn, run_id, values["tenant"], 1, opening.events, at)
