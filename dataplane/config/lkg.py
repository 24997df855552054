"""The last-known-good snapshot file: written atomically after each applied snapshot, read
at start-up so an executor restarted while the control plane is away still serves."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from dataplane.config.snapshot import ConfigError, ExecutorConfig
from pilothouse.v1 import discovery_pb2


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def save(path: Path, config: ExecutorConfig) -> None:
    await asyncio.to_thread(_write, path, config.to_proto().SerializeToString())


async def load(path: Path) -> ExecutorConfig | None:
    """The saved configuration, checked again; None when there is no file.
    ConfigError when the file is there but unusable."""
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        return None
    snapshot = discovery_pb2.ConfigSnapshot()
    try:
        snapshot.ParseFromString(data)
    except Exception as e:
        raise ConfigError(f"{path} is not a configuration snapshot: {e}") from e
    return ExecutorConfig.from_proto(snapshot)
