"""The writes whose shape differs between the run store's backends: creating a run,
writing checkpoints and ending a run. SQLite writes each as a transaction of several
statements (``sqlite.py``); PostgreSQL as one statement committed on its own
(``postgres.py``), since there every statement is a round trip. The rest of the store's
writes are the same on both."""

from __future__ import annotations

from typing import Any, Protocol

from dataplane.runstore.checkpoints import EncodedCheckpoint
from dataplane.runstore.fencing import Fenced
from dataplane.runstore.lifecycle import End
from dataplane.runstore.model import Lease, StepCheckpoint


class Backend(Protocol):
    async def create(self, values: dict[str, Any], opening: StepCheckpoint | None) -> None:
        """Insert the run (``values``: its row), with the outbox record of a queued run,
        or with ``opening`` (its first checkpoint) for one created leased."""
        ...

    async def checkpoint(self, cp: EncodedCheckpoint) -> Fenced: ...

    async def finish(self, lease: Lease, end: End, last: EncodedCheckpoint | None) -> None:
        """End the run, fenced, with ``last`` (a last checkpoint) when given."""
        ...
