"""``dataplane serve --workers N`` against a live control plane: one port, N executors
of the pool (own node id, configuration stream and last-known-good file), a dead worker
started again, a graceful stop of them all, and a port some other process holds
refused."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc

from pilothouse.v1 import api_key_pb2, discovery_pb2, run_pb2, run_pb2_grpc
from pilothouse.v1.discovery_pb2_grpc import ExecutorServiceStub
from tests.conftest import Live
from tests.executors import start_executor
from tests.integration.test_crash_safety import serving
from tests.integration.test_registry_api import _registry_with_agent
from tests.integration.test_telemetry import finished_summary


async def _run_on_a_new_connection(address: str, agent: str, client: str) -> str:
    """A run through a connection of its own (the kernel picks a worker for each); the
    run's name."""
    md = (("authorization", f"Bearer {client}"),)
    # Channels to one address share one connection unless told not to.
    own = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=own) as channel, asyncio.timeout(20):
        stub = run_pb2_grpc.AgentServiceStub(channel)
        while True:  # a worker has the client's key once its configuration is in
            try:
                events = [
                    r.event
                    async for r in stub.RunAgent(
                        run_pb2.RunAgentRequest(
                            agent=agent, input="hello", variables={"customer": "Ada"}
                        ),
                        metadata=md,
                    )
                ]
                break
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                    raise
                await asyncio.sleep(0.1)
    assert events[-1].run_stopped.reason == run_pb2.STOP_REASON_COMPLETED, events[-1]
    return events[-1].run


async def _executor_of(live: Live, run: str) -> str:
    """The node id that reported the run's end to the control plane."""
    return (await finished_summary(live, run)).executor


async def _connected(live: Live, prefix: str) -> list[str]:
    listed = await ExecutorServiceStub(live.channel).ListExecutors(
        discovery_pb2.ListExecutorsRequest(page_size=1000), metadata=live.md()
    )
    return sorted(
        e.node_id for e in listed.executors if e.node_id.startswith(prefix) and e.connected
    )


async def test_workers_share_one_port_each_an_executor_of_the_pool(
    live: Live, tmp_path: Path
) -> None:
    tenant = await _registry_with_agent(live)
    agent = f"tenants/{tenant}/agents/helper"
    client = await live.new_key(api_key_pb2.ROLE_CLIENT, tenant)
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    node = f"workers-{os.urandom(3).hex()}"
    proc = await start_executor(
        live.address,
        key,
        node=node,
        state_dir=tmp_path,
        run_store_url=f"sqlite:///{tmp_path / 'runs.db'}",
        workers=2,
        log_level="INFO",
    )
    try:
        assert len(proc.workers()) == 2, proc.log()
        await serving(proc.address)
        names = [f"{node}-0", f"{node}-1"]
        async with asyncio.timeout(20):
            while await _connected(live, node) != names:
                await asyncio.sleep(0.1)
        for name in names:
            assert (tmp_path / f"executor-{name}.snapshot").exists()

        # Each new connection lands on a worker the kernel picks: both serve runs.
        seen: set[str] = set()
        for _ in range(40):
            run = await _run_on_a_new_connection(proc.address, agent, client)
            seen.add(await _executor_of(live, run))
            if len(seen) == 2:
                break
        assert sorted(seen) == names

        # A worker that dies is started again, under the same node id.
        dead = proc.workers()[0]
        os.kill(dead, signal.SIGKILL)
        async with asyncio.timeout(40):
            while len(now := proc.workers()) != 2 or dead in now:
                await asyncio.sleep(0.1)
            while await _connected(live, node) != names:
                await asyncio.sleep(0.1)
        for _ in range(4):  # and the port serves throughout
            await _run_on_a_new_connection(proc.address, agent, client)
        assert proc.poll() is None
        assert "a worker died" in proc.log()
    finally:
        pids = proc.workers()
        code = await proc.stop(40)
    assert code == 0, proc.log()[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "every worker stopped"


async def test_a_worker_stops_when_its_supervisor_is_killed(live: Live, tmp_path: Path) -> None:
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    proc = await start_executor(
        live.address, key, node=f"orphan-{os.urandom(3).hex()}", state_dir=tmp_path, workers=2
    )
    pids = proc.workers()
    assert len(pids) == 2
    proc.kill()
    await proc.exited()
    async with asyncio.timeout(30):  # SIGTERM from the kernel: a graceful stop
        while any(_alive(pid) for pid in pids):
            await asyncio.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_port_another_process_holds_is_refused_at_start(live: Live, tmp_path: Path) -> None:
    key = await live.new_key(api_key_pb2.ROLE_EXECUTOR, None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "dataplane",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--control-plane",
                    live.address,
                    "--state-dir",
                    str(tmp_path),
                    "--workers",
                    workers,
                ],
                env={**os.environ, "PILOTHOUSE_EXECUTOR_KEY": key},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode != 0
            assert f"127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr, (
                done.stderr
            )
