"""Executor processes (``python -m dataplane serve``) for tests and benchmarks: one
launcher, so that every one starts, is found and stops the same way.

An executor's stderr is drained on a thread from the start (its logs can never fill the
pipe and stall the process being measured), and its last lines are kept for a test's
failure message.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

LOG_LINES = 200
"""Lines of an executor's stderr kept."""


class Executor:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.address = ""
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._listening = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        for line in stderr:
            self._log.append(line.rstrip("\n"))
            if not self.address and (found := re.search(r"listening on (\S+)", line)):
                self.address = found[1]
                self._listening.set()
        stderr.close()
        self._listening.set()  # it exited

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def workers(self) -> list[int]:
        """The pids of its worker processes (``--workers``): the children it spawned
        (not multiprocessing's resource tracker)."""
        return [
            pid
            for pid in children(self.process.pid)
            if b"spawn_main" in _read(Path(f"/proc/{pid}/cmdline"))
        ]

    def log(self) -> str:
        """The last lines it wrote to stderr."""
        return "\n".join(self._log)

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no goodbye, as a crash."""
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.process.terminate()

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def stop_now(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful stop), and its exit status once it is gone."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    async def exited(self, timeout: float = 30) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)

    async def stop(self, timeout: float = 30) -> int:
        return await asyncio.to_thread(self.stop_now, timeout)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # it exited meanwhile
        return b""


def children(pid: int) -> list[int]:
    """The pids of a process's children, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read(entry / "stat")
            if stat and int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def launch_executor(
    control_plane: str,
    key: str,
    *,
    node: str,
    state_dir: Path,
    run_store_url: str | None = None,
    log_level: str = "WARNING",
    lease_ttl: float | None = None,
    cluster: str | None = None,
    env: dict[str, str] | None = None,
    workers: int | None = None,
    listen: str = "127.0.0.1:0",
    timeout: float = 30,
) -> Executor:
    """Start an executor against ``control_plane`` and wait until it listens (its address
    is ``Executor.address``). Tenants' endpoints may reach loopback, where the fakes of
    model providers and tools listen."""
    args = [
        sys.executable,
        "-m",
        "dataplane",
        "serve",
        "--listen",
        listen,
        "--control-plane",
        control_plane,
        "--node-id",
        node,
        "--state-dir",
        str(state_dir),
        "--log-level",
        log_level,
        "--allow-egress",
        "127.0.0.1",
    ]
    if run_store_url is not None:
        args += ["--run-store-url", run_store_url]
    if lease_ttl is not None:
        args += ["--lease-ttl", str(lease_ttl)]
    if cluster is not None:
        args += ["--cluster", cluster]
    if workers is not None:
        args += ["--workers", str(workers)]
    process = subprocess.Popen(
        args,
        env={**os.environ, **(env or {}), "PILOTHOUSE_EXECUTOR_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    executor = Executor(process)
    if not executor._listening.wait(timeout) or not executor.address:
        process.kill()
        process.wait()
        raise RuntimeError(f"the executor did not start:\n{executor.log()[-2000:]}")
    return executor


async def start_executor(control_plane: str, key: str, **options: Any) -> Executor:
    """``launch_executor`` off the event loop."""
    return await asyncio.to_thread(
        functools.partial(launch_executor, control_plane, key, **options)
    )
