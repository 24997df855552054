"""An executor process (`python -m dataplane serve`) against a live control plane."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from pilothouse.v1 import api_key_pb2
from tests.conftest import Live
from tests.integration.test_cli import cli
from tests.integration.test_crash_safety import serving
from tests.integration.test_registry_api import _registry_with_agent
from tests.integration.test_server import _read_until


async def test_executor_serves_once_configured_and_shows_in_the_cli(
    live: Live, tmp_path: Path
) -> None:
    await _registry_with_agent(live)
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    node = f"proc-{os.urandom(3).hex()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dataplane",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--control-plane",
        live.address,
        "--node-id",
        node,
        "--cluster",
        "pool-test",
        "--state-dir",
        str(tmp_path),
        env={**os.environ, "PILOTHOUSE_EXECUTOR_KEY": key},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        seen = await _read_until(proc.stderr, "listening on")
        address = seen.split("listening on ")[1].split()[0]
        await serving(address)
        assert (tmp_path / f"executor-{node}.snapshot").exists()

        async with asyncio.timeout(10):
            while True:
                shown = await cli(live, "executors")
                row = next((r for r in shown.out.splitlines() if r.startswith(node)), "")
                # NODE CLUSTER SEES CONNECTED ACKED IN-SYNC …: all, connected, in sync.
                cells = row.split()
                if len(cells) > 5 and cells[2:4] == ["all", "yes"] and cells[5] == "yes":
                    break
                await asyncio.sleep(0.1)
        assert "pool-test" in row
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
