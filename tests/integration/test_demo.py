"""`make demo`, as the README has a new user run it: the demo script end to end (its own
control plane, executor and refund desk on loopback), every run completing."""

from __future__ import annotations

import asyncio
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
