"""Running a server's event loop: uvloop, whose scheduling and I/O cost a fraction of the
standard loop's, unless PILOTHOUSE_EVENT_LOOP=asyncio asks for the standard one."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    choice = os.environ.get("PILOTHOUSE_EVENT_LOOP", "uvloop")
    if choice not in ("uvloop", "asyncio"):
        raise SystemExit(f"PILOTHOUSE_EVENT_LOOP={choice!r}: use uvloop or asyncio")
    factory: Callable[[], asyncio.AbstractEventLoop] | None = (
        uvloop.new_event_loop if choice == "uvloop" else None
    )
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; whether it was set.

    Loops that wait on an event with a timeout must not use ``asyncio.wait_for`` on
    Python 3.11: a cancellation that arrives as the event is set is swallowed there, and
    the cancelled loop goes on waiting forever. ``asyncio.timeout`` never swallows one.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def every(
    interval: float, work: Callable[[], Awaitable[object]], log: logging.Logger, failed: str
) -> None:
    """Do ``work`` every ``interval`` seconds until cancelled; a pass that fails is
    logged as ``failed`` and the next comes as usual."""
    while True:
        try:
            await work()
        except Exception:
            log.exception(failed)
        await asyncio.sleep(interval)


class Uninterrupted:
    """Work that runs to its end even if whoever awaits it is cancelled meanwhile: a
    database call cut halfway leaves its connection in no state to reuse, and a write
    once started should land or fail, not vanish. ``drain`` waits for what still runs."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    async def run(
        self, work: Awaitable[T], on_done: Callable[[asyncio.Future[T]], None] | None = None
    ) -> T:
        """``work``'s result; ``on_done`` hears of its end, whoever still waits for it."""
        task = asyncio.ensure_future(work)
        if on_done is not None:
            task.add_done_callback(on_done)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        await asyncio.gather(*self._running, return_exceptions=True)
