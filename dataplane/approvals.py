"""The executor's side of approvals: file every call that waits for a person with the
control plane (retrying until it is accepted, also after a restart: filing is idempotent),
and turn each decision streamed back into a queued run that any executor resumes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from dataplane.backoff import Backoff
from dataplane.config.watcher import ConfigWatcher
from dataplane.guardrails import pii
from dataplane.runstore.model import CallState, Run
from dataplane.runstore.store import RunStore
from pilothouse.v1 import agent_pb2, approval_pb2, approval_pb2_grpc
from storekit.loop import wait_event

log = logging.getLogger("pilothouse.executor.approvals")

# How long a request waits when the agent sets no approval timeout.
DEFAULT_TIMEOUT = timedelta(hours=24)


class ApprovalBridge:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        store: RunStore,
        watcher: ConfigWatcher,
        *,
        api_key: str,
        on_claimable: Callable[[], None],
        sweep_interval: float = 2.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._stub = approval_pb2_grpc.ApprovalServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._store = store
        self._watcher = watcher
        self._on_claimable = on_claimable
        self._interval = sweep_interval
        self._backoff = backoff or Backoff()
        self._filed: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._file_forever(), name="approvals-file"),
            asyncio.create_task(self._decisions_forever(), name="approvals-decisions"),
        ]

    def _expiry(self, run: Run) -> datetime:
        """When a request filed now expires: after the agent's approval timeout."""
        config = self._watcher.current
        agent = config.get(agent_pb2.Agent, run.agent) if config else None
        timeout = DEFAULT_TIMEOUT
        if agent is not None and agent.approval_policy.HasField("timeout"):
            timeout = agent.approval_policy.timeout.ToTimedelta()
        return datetime.now(UTC) + timeout

    def nudge(self) -> None:
        """A run paused: file its request now rather than at the next sweep."""
        self._wake.set()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _file_forever(self) -> None:
        while True:
            try:
                for run, call in await self._store.waiting_calls():
                    unknown = call.state is CallState.OUTCOME_UNKNOWN
                    key = f"{run.id}.{call.step}.{call.call_index}"
                    if unknown:
                        key += f".{call.attempts}"
                    if key in self._filed:
                        continue
                    filed = approval_pb2.Approval(
                        run=f"tenants/{run.tenant}/runs/{run.id}",
                        agent=run.agent,
                        step=call.step,
                        call_index=call.call_index,
                        tool=call.tool,
                        # A person decides on them; personal data in them stays here.
                        arguments=pii.redact(json.dumps(call.arguments)),
                        reason=(
                            f"the outcome of this call is unknown ({call.error}): it may "
                            "have taken effect; retry it, or mark it failed or done"
                            if unknown
                            else "the call needs a person's approval"
                        ),
                        kind=approval_pb2.APPROVAL_KIND_UNKNOWN_OUTCOME
                        if unknown
                        else approval_pb2.APPROVAL_KIND_TOOL_CALL,
                        attempt=call.attempts if unknown else 0,
                    )
                    filed.expire_time.FromDatetime(self._expiry(run))
                    await self._stub.CreateApproval(
                        approval_pb2.CreateApprovalRequest(
                            parent=f"tenants/{run.tenant}",
                            approval=filed,
                        ),
                        # The run's trace goes with it to the control plane.
                        metadata=(*self._metadata, *run.request.get("trace", {}).items()),
                        timeout=10,
                    )
                    self._filed.add(key)
            except grpc.aio.AioRpcError as e:
                log.warning("could not file approval requests: %s", e.code().name)
            except Exception:
                log.exception("filing approval requests failed")
            await wait_event(self._wake, self._interval)
            self._wake.clear()

    async def _decisions_forever(self) -> None:
        after = 0
        attempt = 0
        while True:
            try:
                async for response in self._stub.WatchDecisions(
                    approval_pb2.WatchDecisionsRequest(after_sequence=after),
                    metadata=self._metadata,
                ):
                    attempt = 0
                    approval = response.approval
                    after = approval.decision_sequence
                    run_id = approval.run.rsplit("/", 1)[-1]
                    decided = decision(approval)
                    if await self._store.decide_call(
                        run_id,
                        approval.step,
                        approval.call_index,
                        state=decided.state,
                        note=decided.note,
                        result=decided.result,
                        attempt=approval.attempt
                        if approval.kind == approval_pb2.APPROVAL_KIND_UNKNOWN_OUTCOME
                        else 0,
                    ):
                        log.info(
                            "approval decided",
                            extra={"run": run_id, "decision": decided.state.value},
                        )
                        self._on_claimable()
            except grpc.aio.AioRpcError as e:
                log.warning("decision stream ended: %s", e.code().name)
            except Exception:
                log.exception("applying decisions failed")
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1


@dataclass(frozen=True)
class Decided:
    """A decision as the run's journal records it (``RunStore.decide_call``)."""

    state: CallState
    note: str = ""
    result: Any = None


def decision(approval: approval_pb2.Approval) -> Decided:
    """What a decided (or expired) request means for its call."""
    expired = approval.state == approval_pb2.APPROVAL_STATE_EXPIRED
    why = f": {approval.comment}" if approval.comment else ""
    if approval.kind != approval_pb2.APPROVAL_KIND_UNKNOWN_OUTCOME:
        if approval.state == approval_pb2.APPROVAL_STATE_APPROVED:
            return Decided(CallState.APPROVED)
        note = "nobody approved this call in time" if expired else "a person denied this call"
        return Decided(CallState.DENIED, note)
    if approval.decision == approval_pb2.DECISION_RETRY:
        return Decided(CallState.APPROVED)
    if approval.decision == approval_pb2.DECISION_MARK_DONE:
        return Decided(CallState.RESOLVED, "", json.loads(approval.result))
    note = (
        "the outcome of this call is unknown and nobody said what it was in time"
        if expired
        else f"a person marked this call failed{why}"
    )
    return Decided(CallState.RESOLVED, note, {"error": note})
