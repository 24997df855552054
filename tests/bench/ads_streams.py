"""One process of ADS streams for the propagation benchmark: each stream subscribes to
every Pilothouse type, ACKs every snapshot, and prints a JSON line with the wall time at
which it held each new version whole."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from dataplane.config.snapshot import TYPE_URLS
from storekit import loop


async def stream(channel: grpc.aio.Channel, key: str, node: str) -> None:
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
        metadata=(("authorization", f"Bearer {key}"),)
    )
    identity = base_pb2.Node(id=node, cluster="bench")
    for url in TYPE_URLS:
        await call.write(discovery_pb2.DiscoveryRequest(node=identity, type_url=url))
    rounds: dict[str, dict[str, str]] = {}
    async for response in call:
        got = rounds.setdefault(response.version_info, {})
        got[response.type_url] = response.nonce
        if len(got) == len(TYPE_URLS):
            now = time.time()
            print(
                json.dumps({"node": node, "version": response.version_info, "at": now}), flush=True
            )
            for url, nonce in got.items():
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        node=identity,
                        type_url=url,
                        version_info=response.version_info,
                        response_nonce=nonce,
                    )
                )
            del rounds[response.version_info]


async def main() -> None:
    address, key, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, count // 100))]
    await asyncio.gather(
        *(stream(channels[i % len(channels)], key, f"{prefix}-{i}") for i in range(count))
    )


if __name__ == "__main__":
    loop.run(main())  # the event loop executors run on
