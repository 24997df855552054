"""`make demo`, as the README has a new user run it: the demo script end to end (its own
control plane, executor and refund desk on loopback), every run completing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
async def test_the_demo_runs_end_to_end() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "demo.py"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 170)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    assert text.count("stopped: completed") == 2, text[-3000:]
    assert "refused" not in text and "Traceback" not in text, text[-3000:]


async def demo(**env: str) -> tuple[int, str, int]:
    """The demo run in a session of its own: its exit code, its output, and how many of
    the processes it started are still alive once it has exited."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "demo.py"),
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 170)
    await asyncio.sleep(0.5)
    alive = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(pid)) == proc.pid:
                    alive += 1
    assert proc.returncode is not None
    return proc.returncode, out.decode(), alive


@pytest.mark.timeout(180)
async def test_the_demo_takes_a_free_port_when_its_own_is_taken() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        code, text, alive = await demo(DEMO_REFUND_PORT=str(port))
    finally:
        taken.close()
    assert code == 0, text[-3000:]
    assert f"Port {port} is taken" in text and text.count("stopped: completed") == 2
    assert alive == 0


@pytest.mark.timeout(120)
async def test_a_demo_that_fails_stops_everything_it_started() -> None:
    # An endpoint the executor refuses: it exits, after the control plane has started.
    code, text, alive = await demo(OPENAI_API_KEY="sk-demo", OPENAI_BASE_URL="not a url")
    assert code != 0 and "the executor did not start" in text, text[-3000:]
    assert alive == 0, "nothing the demo started is left running"
