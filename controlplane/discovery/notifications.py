"""Changes made through other control-plane replicas, heard at once on PostgreSQL.

Every committed registry change bumps the registry's revision, and on PostgreSQL the
same transaction sends a notification on ``NOTIFY_CHANNEL`` (delivered on commit, never for a
change rolled back). Each replica listens on one connection of its own and nudges its
snapshot publisher when one arrives, so a change made through replica A reaches the
executors of replica B within a round trip. A notification lost while the connection
is down only waits for the publisher's periodic reconcile; the listener reconnects with
back-off, and nudges once it is back in case it missed something.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import sqlalchemy as sa

from controlplane.store.revision import NOTIFY_CHANNEL

log = logging.getLogger("pilothouse.discovery")

RETRY_MAX = 10.0


class ChangeListener:
    def __init__(self, url: sa.URL, on_change: Callable[[], None]) -> None:
        """``url``: the control plane's PostgreSQL database."""
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="registry-listener")

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(NOTIFY_CHANNEL, self._heard)
                self.connected.set()
                self._on_change()  # whatever happened while not listening
                delay = 0.5
                await lost.wait()
                log.warning("lost the registry notification connection; reconnecting")
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("cannot listen for registry changes (retrying in %.1f s): %s", delay, e)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _heard(self, *_args: Any) -> None:
        self._on_change()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()
