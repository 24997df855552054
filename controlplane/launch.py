"""Run a control plane as a child process and learn its address: for the demo, the
benchmarks and anything else that wants a real server in its own process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

_LISTENING = re.compile(r"listening on (\S+)")


@dataclass
class ChildControlPlane:
    process: subprocess.Popen[str]
    address: str
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    """The child's last log lines (its stderr is drained so it never blocks on a full pipe)."""
    drain: threading.Thread | None = None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for the graceful shutdown; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=timeout)
        if self.drain is not None:
            self.drain.join(timeout=5)
        return status


def start(
    database_url: str,
    *,
    bootstrap_key: str,
    log_level: str = "WARNING",
    cwd: Path | None = None,
    timeout: float = 30,
) -> ChildControlPlane:
    env = {
        **os.environ,
        "PILOTHOUSE_BOOTSTRAP_KEY": bootstrap_key,
        "PILOTHOUSE_LOG_LEVEL": log_level,
        "PILOTHOUSE_LOG_FORMAT": "text",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    tail: deque[str] = deque(maxlen=200)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        tail.append(line)
        match = _LISTENING.search(line)
        if match:
            drain = threading.Thread(target=_drain, args=(process, tail), daemon=True)
            drain.start()
            return ChildControlPlane(process, match[1], tail, drain)
    process.kill()
    process.wait()
    raise RuntimeError("the control plane did not start:\n" + "".join(tail))


def _drain(process: subprocess.Popen[str], tail: deque[str]) -> None:
    assert process.stderr is not None
    with process.stderr:  # closed at the end of the child's output, not left to the GC
        for line in process.stderr:
            tail.append(line)
