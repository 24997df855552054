"""What a supervisor gives each of its workers, and how it reserves their port."""

from __future__ import annotations

import socket

import pytest

from dataplane.settings import Settings
from dataplane.workers import reserve_port, worker_settings


def test_each_worker_is_an_executor_of_its_own_with_a_share_of_the_runs() -> None:
    machine = Settings(api_key="k", node_id="host", listen="0.0.0.0:0", workers=3)
    given = [worker_settings(machine, i, 7071) for i in range(3)]
    assert [w.node_id for w in given] == ["host-0", "host-1", "host-2"]
    assert len({w.lkg_path for w in given}) == 3
    assert {w.listen for w in given} == {"0.0.0.0:7071"}
    assert all(w.reuse_port and w.workers == 1 for w in given)
    assert {w.max_concurrent_runs for w in given} == {334}  # ⌈1000 / 3⌉


def test_port_zero_becomes_one_port_the_workers_can_share() -> None:
    held = reserve_port("127.0.0.1:0")
    try:
        port = held.getsockname()[1]
        assert port != 0
        with socket.socket() as worker:  # as gRPC binds with SO_REUSEPORT
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
    finally:
        held.close()


def test_a_port_another_process_listens_on_is_refused_naming_the_flag() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"--listen 127.0.0.1:{port}: "):
            reserve_port(f"127.0.0.1:{port}")
    with pytest.raises(SystemExit, match="give host:port"):
        reserve_port("127.0.0.1:http")
