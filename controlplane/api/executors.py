"""ExecutorService: what each executor has acknowledged."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.discovery.executors import ExecutorRegistry, ExecutorStatus
from controlplane.discovery.publisher import SnapshotPublisher
from controlplane.discovery.snapshot import Snapshot
from pilothouse.v1 import discovery_pb2 as pb
from pilothouse.v1 import discovery_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


def _executor(status: ExecutorStatus, snapshot: Snapshot) -> pb.Executor:
    expected = snapshot.version_for(status.view or None)
    message = pb.Executor(
        name=f"executors/{status.node_id}",
        node_id=status.node_id,
        cluster=status.cluster,
        connected=status.connected,
        acked_version=status.acked_version,
        last_nack_version=status.last_nack_version,
        last_nack_error=status.last_nack_error,
        view=f"tenants/{status.view}" if status.view else "",
        expected_version=expected,
        in_sync=status.acked_version == expected,
    )
    message.connected_since.FromDatetime(status.connected_since)
    message.last_seen_time.FromDatetime(status.last_seen_time)
    if status.last_nack_time is not None:
        message.last_nack_time.FromDatetime(status.last_nack_time)
    return message


class ExecutorServicer(discovery_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, executors: ExecutorRegistry, publisher: SnapshotPublisher) -> None:
        self._executors = executors
        self._publisher = publisher

    async def ListExecutors(
        self, request: pb.ListExecutorsRequest, context: Ctx
    ) -> pb.ListExecutorsResponse:
        statuses, token = await self._executors.list_page(request.page_size, request.page_token)
        snapshot = self._publisher.current
        return pb.ListExecutorsResponse(
            executors=[_executor(s, snapshot) for s in statuses],
            next_page_token=token,
            current_version=snapshot.version,
        )
