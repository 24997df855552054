"""One process of ADS streams for the propagation benchmark: each stream watches every
tenant's configuration over Delta xDS, acknowledges every response, and prints a JSON
line with the wall time at which it held each new version of a tenant's configuration."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from pilothouse.configuration import TENANT_CONFIGURATION_URL
from storekit import loop


async def stream(channel: grpc.aio.Channel, key: str, node: str) -> None:
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(
        metadata=(("authorization", f"Bearer {key}"),)
    )
    identity = base_pb2.Node(id=node, cluster="bench")
    await call.write(
        discovery_pb2.DeltaDiscoveryRequest(node=identity, type_url=TENANT_CONFIGURATION_URL)
    )
    async for response in call:
        if response.resources:
            now = time.time()
            print(
                json.dumps({"node": node, "version": response.system_version_info, "at": now}),
                flush=True,
            )
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=identity, type_url=TENANT_CONFIGURATION_URL, response_nonce=response.nonce
            )
        )


async def main() -> None:
    address, key, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, count // 100))]
    await asyncio.gather(
        *(stream(channels[i % len(channels)], key, f"{prefix}-{i}") for i in range(count))
    )


if __name__ == "__main__":
    loop.run(main())  # the event loop executors run on
