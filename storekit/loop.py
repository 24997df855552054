"""Running a server's event loop: uvloop, whose scheduling and I/O cost a fraction of the
standard loop's, unless PILOTHOUSE_EVENT_LOOP=asyncio asks for the standard one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
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
