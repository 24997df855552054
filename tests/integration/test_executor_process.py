"""An executor process (`python -m dataplane serve`) against a live control plane."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pilothouse.v1 import api_key_pb2
from tests.conftest import Live
from tests.executors import start_executor
from tests.integration.test_cli import cli
from tests.integration.test_crash_safety import serving
from tests.integration.test_registry_api import _registry_with_agent


async def test_executor_serves_once_configured_and_shows_in_the_cli(
    live: Live, tmp_path: Path
) -> None:
    await _registry_with_agent(live)
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    node = f"proc-{os.urandom(3).hex()}"
    proc = await start_executor(
        live.address, key, node=node, state_dir=tmp_path, cluster="pool-test", log_level="INFO"
    )
    try:
        address = proc.address
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
        code = await proc.stop(20)
    assert code == 0, proc.log()[-2000:]
