"""The outbox relay: stream what waits in the run store's outbox to the control plane
(``TelemetryService.StreamEvents``) until it acknowledges it, then delete it.

Any executor of a pool relays any run's events: a batch is claimed in the outbox for a
while, so two relays never send the same batch at once. A batch whose acknowledgement
does not come (the stream broke, the control plane is down, this executor died) is sent
again, by this relay after a reconnect or by any relay once its claim expires: delivery is
at least once, and the control plane ingests by event id, so it counts each event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import json_format

from dataplane import fastjson
from dataplane.backoff import Backoff
from dataplane.runstore.model import OutboxEvent
from dataplane.runstore.outbox import Backlog, Outbox
from pilothouse.v1 import telemetry_pb2, telemetry_pb2_grpc
from pilothouse.wellknown import timestamp_of
from storekit.loop import wait_event

log = logging.getLogger("pilothouse.executor.relay")


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 500
    window: int = 4
    """Batches sent and not acknowledged yet, at most."""
    claim_ttl: timedelta = timedelta(seconds=30)
    """How long a claimed batch stays this relay's without an acknowledgement."""
    linger: float = 0.02
    """After being woken, wait this long for more events to batch with."""
    poll_interval: float = 1.0
    """Look at the outbox at least this often (for other executors' events)."""
    status_interval: float = 5.0
    """Report the backlog at least this often, events or not."""
    max_backlog: int = 100_000
    """Refuse new runs while this many events wait: back-pressure, never dropping."""
    count_interval: float = 1.0
    """Count what waits in the outbox this often."""


def to_proto(event: OutboxEvent) -> telemetry_pb2.TelemetryEvent:
    """The event as the contract carries it. One this executor cannot express (a bug)
    still leaves, as an audit record of its raw content, rather than block the outbox."""
    fields: dict[str, Any] = {
        "id": event.id,
        "run": f"tenants/{event.tenant}/runs/{event.run_id}"
        if event.run_id
        else f"tenants/{event.tenant}",
        "time": timestamp_of(event.created_at),
        "executor": event.executor,
        "sequence": event.sequence,
    }
    if event.kind != "audit":
        # The payloads records.py builds use the messages' field names and plain values,
        # which the constructor takes directly: several times cheaper than json_format,
        # and every event of every run passes here. Any other (a time as text) falls
        # back to the JSON mapping below.
        oneof: dict[str, Any] = {event.kind: event.payload}
        try:
            return telemetry_pb2.TelemetryEvent(**fields, **oneof)
        except (ValueError, TypeError):
            pass
    message = telemetry_pb2.TelemetryEvent(**fields)
    if event.kind == "audit":
        message.audit.action = event.type
        message.audit.resource = str(event.payload.get("resource") or message.run)
        message.audit.details = fastjson.dumps_text(event.payload, sort_keys=True)
        return message
    try:
        json_format.ParseDict(event.payload, getattr(message, event.kind))
    except (AttributeError, TypeError, json_format.ParseError) as e:
        log.error("outbox event cannot be expressed", extra={"event": event.id, "error": str(e)})
        message.ClearField("event")
        message.audit.action = "telemetry.unreadable"
        message.audit.resource = message.run
        message.audit.details = fastjson.dumps_text(
            {"kind": event.kind, "type": event.type, "payload": event.payload, "error": str(e)},
            sort_keys=True,
        )
    return message


class OutboxRelay:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        outbox: Outbox,
        *,
        api_key: str,
        executor: str,
        owner: str,
        settings: RelaySettings = RelaySettings(),
        backoff: Backoff | None = None,
    ) -> None:
        """``executor``: this executor's node id; ``owner``: its name on outbox claims."""
        self._stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._outbox = outbox
        self._executor = executor
        self._owner = owner
        self.settings = settings
        # Reconnect soon after an outage: the run index is only as fresh as this.
        self._backoff = backoff or Backoff(maximum=5.0)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.backlog = Backlog(0, None)
        """The outbox as last counted (every ``count_interval``, delivering or not)."""
        self.delivered = 0
        """Events acknowledged since start."""

    async def start(self) -> None:
        self.backlog = await self._outbox.backlog()
        self._tasks = [
            asyncio.create_task(self._forever(), name="outbox-relay"),
            asyncio.create_task(self._count_forever(), name="outbox-count"),
        ]

    def nudge(self) -> None:
        """Events were written: look at the outbox now rather than at the next poll."""
        self._wake.set()

    def full(self) -> bool:
        return self.backlog.events >= self.settings.max_backlog

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._outbox.drain()

    async def _forever(self) -> None:
        attempt = 0
        while True:
            try:
                if await self._stream():
                    attempt = 0
            except grpc.aio.AioRpcError as e:
                log.warning("telemetry stream ended: %s %s", e.code().name, e.details())
            except Exception:
                log.exception("relaying the outbox failed")
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    async def _count_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.count_interval)
            try:
                self.backlog = await self._outbox.backlog()
            except Exception:
                log.exception("counting the outbox failed")

    async def _await_more(self) -> None:
        """Until nudged (or the poll interval passes), then a moment more for what
        follows to join the batch."""
        await wait_event(self._wake, self.settings.poll_interval)
        self._wake.clear()
        await asyncio.sleep(self.settings.linger)

    async def _stream(self) -> bool:
        """One stream, until it breaks; whether anything was acknowledged on it. Batches
        not acknowledged go back to the outbox for any relay."""
        call = self._stub.StreamEvents(metadata=self._metadata)
        in_flight: dict[int, list[str]] = {}
        room = asyncio.Event()
        """Set when an acknowledgement made room in the window."""
        delivered: list[str] = []
        """Acknowledged, to leave the outbox with the next claim (or the release)."""
        acked = False

        async def send() -> None:
            sequence = 0
            reported = 0.0
            short = False
            while True:
                while len(in_flight) >= self.settings.window:
                    room.clear()
                    await room.wait()
                if short:
                    # The last claim took all there was: wait for more (a run store's
                    # write or an acknowledgement nudges) rather than claim nothing.
                    await self._await_more()
                leaving = delivered[:]
                events = await self._outbox.claim(
                    self._owner,
                    limit=self.settings.batch_size,
                    ttl=self.settings.claim_ttl,
                    delivered=leaving,
                )
                del delivered[: len(leaving)]
                short = len(events) < self.settings.batch_size
                due = time.monotonic() - reported >= self.settings.status_interval
                if not events and not due:
                    continue
                backlog = self.backlog
                sequence += 1
                request = telemetry_pb2.StreamEventsRequest(
                    executor=self._executor,
                    batch_sequence=sequence,
                    events=[to_proto(e) for e in events],
                    pending_events=max(backlog.events - len(events), 0),
                )
                if backlog.oldest is not None and backlog.events > len(events):
                    request.oldest_pending_time.FromDatetime(backlog.oldest)
                in_flight[sequence] = [e.id for e in events]
                await call.write(request)
                reported = time.monotonic()

        sender = asyncio.create_task(send(), name="outbox-relay-send")
        try:
            while True:
                response = await _read(call, sender)
                if response is None:
                    return acked
                done = [s for s in in_flight if s <= response.acked_batch_sequence]
                ids = [i for s in done for i in in_flight[s]]
                delivered.extend(ids)
                self._wake.set()
                self.delivered += len(ids)
                if not acked:
                    log.info("telemetry stream delivering", extra={"events": len(ids)})
                acked = True
                for s in done:
                    del in_flight[s]
                room.set()
                for rejected in response.rejected:
                    log.error(
                        "the control plane rejected an event (kept there, not applied)",
                        extra={"event": rejected.id, "reason": rejected.reason},
                    )
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            call.cancel()
            # A claim the sender had begun still completes: only then give back all.
            await self._outbox.drain()
            with contextlib.suppress(Exception):
                await self._outbox.release(self._owner, delivered)


async def _read(
    call: grpc.aio.StreamStreamCall[
        telemetry_pb2.StreamEventsRequest, telemetry_pb2.StreamEventsResponse
    ],
    sender: asyncio.Task[None],
) -> telemetry_pb2.StreamEventsResponse | None:
    """The next answer; None when the stream ended. A failed sender ends it too: with
    the stream's own error when the stream is what failed."""
    reading = asyncio.ensure_future(call.read())
    await asyncio.wait({reading, sender}, return_when=asyncio.FIRST_COMPLETED)
    if not reading.done():
        if not call.done():
            reading.cancel()
            sender.result()  # raises why the sender stopped
            return None
        await asyncio.wait({reading})
    response = reading.result()
    if response is grpc.aio.EOF:
        return None
    assert isinstance(response, telemetry_pb2.StreamEventsResponse)
    return response
