"""``dataplane serve --workers N``: N executor processes behind one listening port.

One executor process uses one core: its Python runs under one GIL. The supervisor
reserves the port, starts N workers (``spawn``: no forked gRPC or database state) and
restarts one that dies, after a backoff. Each worker is a whole executor of the pool,
as one on another machine would be: node id ``{node_id}-{i}``, its own last-known-good
file (named after the node id), configuration stream, outbox relay, quota leases and
run-store connections; ``--max-concurrent-runs`` is shared out between them. The kernel
spreads new connections over the workers' listening sockets (SO_REUSEPORT); a run any
worker holds is known to all of them through the run store, so every call about it
(GetRun, StopRun, WatchRun) is answered whichever worker the connection reached.

Metrics go out by OTLP with the worker's node id as ``service.instance.id``: each
worker's counters are their own series and only count up, whether or not a worker
restarts (a restart is a new series start, which OTLP's cumulative temporality marks).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from types import FrameType

from dataplane.backoff import Backoff
from dataplane.server import Executor, serve
from dataplane.settings import Settings
from storekit import logs, loop

log = logging.getLogger("pilothouse.executor.workers")

RESTART = Backoff(initial=0.5, maximum=30.0)
"""Waits before a dead worker is started again."""
STEADY = 10.0
"""Seconds a worker must have run for its death not to count towards a crash loop."""
STOP_MARGIN = 15.0
"""Seconds beyond the shutdown grace a worker gets to stop before it is killed."""
PR_SET_PDEATHSIG = 1


def worker_settings(settings: Settings, index: int, port: int) -> Settings:
    """Worker ``index``'s settings: the reserved port, its own node id, its share of the
    concurrent runs."""
    host = settings.listen.rsplit(":", 1)[0]
    return replace(
        settings,
        listen=f"{host}:{port}",
        node_id=f"{settings.node_id}-{index}",
        max_concurrent_runs=-(-settings.max_concurrent_runs // settings.workers),
        workers=1,
        reuse_port=True,
    )


def reserve_port(listen: str) -> socket.socket:
    """A socket bound to ``listen`` with SO_REUSEPORT, held (not listening, so it takes
    no connections) while the workers run: port 0 becomes one port they all bind, and
    the port stays theirs across a worker's restart. A port some other process holds
    is refused here, before any worker starts."""
    host, _, port_text = listen.rpartition(":")
    try:
        port = int(port_text)
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (ValueError, OSError) as e:
        raise SystemExit(f"--listen {listen!r}: give host:port ({e})") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as e:
            raise SystemExit(f"--listen {listen}: {e.strerror}") from None
        address = (address[0], probe.getsockname()[1], *address[2:])
    held = socket.socket(family, kind, proto)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind(address)
    except OSError as e:
        held.close()
        raise SystemExit(f"--listen {listen}: {e.strerror}") from None
    return held


def run_worker(settings: Settings, ready: Connection, supervisor: int) -> None:
    """A worker process's body: an executor that tells the supervisor its port."""
    _stop_with(supervisor)
    logs.configure(settings.log_level, settings.log_format)

    def started(executor: Executor) -> None:
        ready.send(executor.port)
        ready.close()

    loop.run(serve(settings, started))


def _stop_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies, even by
    SIGKILL, so no worker goes on serving without one (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(eq=False)
class Worker:
    """One worker's place: its settings, its process now (None while it waits to be
    started again), the pipe it tells its port on, and its restarts."""

    index: int
    settings: Settings
    process: SpawnProcess | None = None
    ready: Connection | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None

    def start(self) -> None:
        spawn = multiprocessing.get_context("spawn")
        receive, send = spawn.Pipe(duplex=False)
        self.process = spawn.Process(
            target=run_worker,
            args=(self.settings, send, os.getpid()),
            name=f"executor-worker-{self.index}",
        )
        self.process.start()
        send.close()
        self.ready, self.started_at, self.restart_at = receive, time.monotonic(), None

    def listening(self) -> bool:
        """Whether it has told its port (without waiting)."""
        if self.ready is None or not self.ready.poll():
            return False
        try:
            self.ready.recv()
        except EOFError:  # it exited before listening: its sentinel tells the rest
            return False
        finally:
            self.ready.close()
            self.ready = None
        return True

    def exited(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def schedule_restart(self, now: float) -> float:
        """After a death: when to start it again (sooner if it ran steadily a while)."""
        self.failures = 0 if now - self.started_at >= STEADY else self.failures + 1
        if self.ready is not None:
            self.ready.close()
        self.process, self.ready = None, None
        delay = RESTART.delay(self.failures)
        self.restart_at = now + delay
        return delay


class Supervisor:
    """Starts the workers, restarts the dead, and stops them all on SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._held = reserve_port(settings.listen)
        self.port: int = self._held.getsockname()[1]
        self.workers = [
            Worker(i, worker_settings(settings, i, self.port)) for i in range(settings.workers)
        ]
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.settings.listen.rsplit(':', 1)[0]}:{self.port}"

    def run(self) -> int:
        """Serve until told to stop; the exit status: 0 when every worker stopped
        cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for worker in self.workers:
                worker.start()
            if not self._all_listening() and not self._stopping:
                self._stop()
                return 1
            if not self._stopping:
                print(
                    f"executor listening on {self.address} ({len(self.workers)} workers)",
                    file=sys.stderr,
                    flush=True,
                )
                self._supervise()
            return self._stop()
        finally:
            self._held.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _on_signal(self, _sig: int, _frame: FrameType | None) -> None:
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def _all_listening(self) -> bool:
        waiting = set(self.workers)
        while not self._stopping:
            for worker in list(waiting):
                if worker.listening():
                    waiting.discard(worker)
                elif (code := worker.exited()) is not None:
                    log.error(
                        "a worker exited before it listened",
                        extra={"worker": worker.index, "exit_code": code},
                    )
                    return False
            if not waiting:
                return True
            self._wait(
                [w.ready for w in waiting if w.ready is not None]
                + [w.process.sentinel for w in waiting if w.process is not None],
                None,
            )
        return False

    def _supervise(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for worker in self.workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    log.info("restarting a worker", extra={"worker": worker.index})
                    worker.start()
                elif worker.ready is not None:
                    worker.listening()
                elif worker.process is not None and (code := worker.exited()) is not None:
                    delay = worker.schedule_restart(now)
                    log.error(
                        "a worker died",
                        extra={"worker": worker.index, "exit_code": code, "restart_in": delay},
                    )
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            self._wait(
                [w.process.sentinel for w in self.workers if w.process is not None]
                + [w.ready for w in self.workers if w.ready is not None],
                max(0.0, min(due) - time.monotonic()) if due else None,
            )

    def _wait(self, handles: list[Connection | int], timeout: float | None) -> None:
        if self._wake_read in wait([*handles, self._wake_read], timeout):
            os.read(self._wake_read, 64)

    def _stop(self) -> int:
        """SIGTERM to every worker (each stops as one executor does: drains its calls,
        hands its runs back), SIGKILL to any still there after the grace."""
        running = [w.process for w in self.workers if w.process is not None]
        for process in running:
            if process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_grace + STOP_MARGIN
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("a worker did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.join()
        return 0 if all(p.exitcode == 0 for p in running) else 1


def supervise(settings: Settings) -> int:
    return Supervisor(settings).run()
