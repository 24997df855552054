"""Rollouts: what callers do with them (create, read, pause, resume, promote, abort,
watch) and the loop that moves them on (start, analyse, step, promote or abort).

The loop runs on one control-plane replica at a time, the one holding the
``rollout-analysis`` lease in the database; it ticks every second, starts pending
rollouts, and analyses each progressing or paused one once per its analysis interval
(counted from the later of its step's start and its last analysis). Every change is a
registry write (audited, and pushed to executors in their configuration at once);
every analysis is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from controlplane.auth.principal import Principal
from controlplane.errors import InvalidArgument, NotFound
from controlplane.loops import LoopLease
from controlplane.registry import codec, kinds, names
from controlplane.registry import resources as r
from controlplane.registry.service import Registry, resource_name
from controlplane.rollouts import analysis, progress
from controlplane.rollouts.analysis import AnalysisResult, EndedRun
from controlplane.store import rollouts as rollout_store
from controlplane.store.database import Database
from controlplane.store.rollouts import AnalysisRow
from pilothouse.assignment import BUCKETS

log = logging.getLogger("pilothouse.rollouts")

EvalGate = Callable[[str, r.Rollout], Awaitable[str | None]]

LEASE = "rollout-analysis"
KIND = kinds.ROLLOUT
WATCH_POLL = 1.0
"""Seconds between a watcher's reads when nothing changed on this replica: changes made
through another replica reach it this late at most."""


@dataclass(frozen=True)
class RolloutView:
    """A rollout with its newest analysis (None before the first)."""

    record: r.Record[r.Rollout]
    last_analysis: AnalysisResult | None

    @property
    def name(self) -> str:
        return resource_name(KIND, self.record.tenant, self.record.id)


class Rollouts:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        *,
        replica: str,
        tick: float = 1.0,
        eval_gate: EvalGate | None = None,
    ) -> None:
        """``eval_gate``: (tenant, rollout) → why its eval gate holds it back, or None."""
        self._db = db
        self._eval_gate = eval_gate
        self._registry = registry
        self._tick = tick
        self._lease = LoopLease(db, LEASE, replica, timedelta(seconds=max(5.0, 3 * tick)))
        self._analysed: dict[str, datetime] = {}
        """Newest analysis time of each rollout, as this replica knows it while it holds
        the lease (read from the database when it takes the lease)."""
        self._changed = asyncio.Event()

    # -- callers ---------------------------------------------------------------------

    async def create(
        self, caller: Principal, parent: str, rollout_id: str, spec: r.Rollout
    ) -> RolloutView:
        tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        if spec.prompt and not spec.baseline_version:
            # The baseline is what production runs now; the registry checks again, in the
            # creating transaction, that it still is.
            with contextlib.suppress(NotFound, InvalidArgument):  # create names the problem
                prompt = await self._registry.get(caller, kinds.PROMPT, spec.prompt)
                production = prompt.spec.labels.get(kinds.DEFAULT_PROMPT_LABEL, "")
                spec = dataclasses.replace(spec, baseline_version=production)
        record = await self._registry.create(caller, KIND, parent, rollout_id, spec)
        self._notify()
        return RolloutView(record, None)

    async def get(self, caller: Principal, name: str) -> RolloutView:
        record = await self._registry.get(caller, KIND, name)
        return (await self._views([record]))[0]

    async def list_page(
        self, caller: Principal, parent: str, size: int, token: str
    ) -> tuple[list[RolloutView], str]:
        records, next_token = await self._registry.list_resources(caller, KIND, parent, size, token)
        return await self._views(records), next_token

    async def pause(self, caller: Principal, name: str, reason: str) -> RolloutView:
        return await self._move(caller, name, lambda ro: progress.pause(ro, name, reason))

    async def resume(self, caller: Principal, name: str, reason: str) -> RolloutView:
        return await self._move(caller, name, lambda ro: progress.resume(ro, name, reason))

    async def promote(self, caller: Principal, name: str, reason: str) -> RolloutView:
        record = await self._registry.get(caller, KIND, name)
        blocked = await self._gate(record)
        return await self._move(
            caller, name, lambda ro: progress.promote(ro, name, reason, blocked)
        )

    async def abort(self, caller: Principal, name: str, reason: str) -> RolloutView:
        return await self._move(caller, name, lambda ro: progress.abort(ro, name, reason))

    async def watch(self, caller: Principal, name: str) -> AsyncIterator[RolloutView]:
        """The rollout now, then after every change, until it is finished."""
        last: tuple[str, datetime | None] | None = None
        while True:
            changed = self._changed
            view = await self.get(caller, name)
            seen = (
                view.record.etag,
                view.last_analysis.analysis_time if view.last_analysis else None,
            )
            if seen != last:
                last = seen
                yield view
            if view.record.spec.state.finished:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_POLL):
                    await changed.wait()

    async def _move(self, caller: Principal, name: str, change: progress.Change) -> RolloutView:
        record = await self._registry.modify(caller, KIND, name, lambda rec: change(rec.spec))
        self._notify()
        return (await self._views([record]))[0]

    async def _views(self, records: list[r.Record[r.Rollout]]) -> list[RolloutView]:
        by_tenant: dict[str, list[str]] = {}
        for rec in records:
            by_tenant.setdefault(rec.tenant, []).append(rec.id)
        latest: dict[tuple[str, str], AnalysisRow] = {}
        async with self._db.snapshot() as conn:
            for tenant, ids in by_tenant.items():
                rows = await rollout_store.latest_analyses(conn, tenant, ids)
                latest |= {(tenant, id_): row for id_, row in rows.items()}
        return [
            RolloutView(rec, _decode(latest[(rec.tenant, rec.id)]))
            if (rec.tenant, rec.id) in latest
            else RolloutView(rec, None)
            for rec in records
        ]

    def _notify(self) -> None:
        """Wake every watcher, and give later ones a fresh event to wait on."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the loop --------------------------------------------------------------------

    async def run_forever(self) -> None:
        await self._lease.run(self._tick, self._pass)

    async def _pass(self, now: datetime) -> None:
        """One pass over every unfinished rollout, while this replica holds the lease."""
        if self._lease.regained:
            self._analysed.clear()  # another replica may have analysed meanwhile
        records = [
            rec for rec in await self._registry.everywhere(KIND) if not rec.spec.state.finished
        ]
        await self._learn_analysis_times(records)
        for rec in records:
            name = resource_name(KIND, rec.tenant, rec.id)
            try:
                await self._advance(rec, name, now)
            except Exception:
                log.exception("rollout could not advance", extra={"rollout": name})

    async def _advance(self, rec: r.Record[r.Rollout], name: str, now: datetime) -> None:
        ro = rec.spec
        if ro.state is r.RolloutState.PENDING:
            blocked = await self._gate(rec)
            await self._system_move(name, lambda cur: progress.start(cur, now, blocked))
            return
        if ro.state not in (r.RolloutState.PROGRESSING, r.RolloutState.PAUSED):
            return
        assert ro.step_start_time is not None
        since = max(ro.step_start_time, self._analysed.get(name, ro.step_start_time))
        if now - since < progress.interval(ro):
            return
        result = await self.analyse(rec, now)
        blocked = await self._gate(rec) if ro.step_index == len(ro.steps) - 1 else None
        await self._system_move(
            name, lambda cur: progress.after_analysis(cur, name, result, now, blocked)
        )

    async def _gate(self, rec: r.Record[r.Rollout]) -> str | None:
        if self._eval_gate is None or rec.spec.eval_gate is None:
            return None
        return await self._eval_gate(rec.tenant, rec.spec)

    async def analyse(self, rec: r.Record[r.Rollout], now: datetime) -> AnalysisResult:
        """Analyse the rollout's current step and keep the result."""
        ro = rec.spec
        assert ro.step_start_time is not None
        version_of = {
            analysis.BASELINE: ro.baseline_version,
            analysis.CANDIDATE: ro.candidate_version,
        }
        # At 100 % the baseline gets no runs: its checks compare with the baseline's runs
        # of the whole rollout (the earlier steps).
        full = ro.weight_bps >= BUCKETS
        since = {
            analysis.CANDIDATE: ro.step_start_time,
            analysis.BASELINE: rec.create_time if full else ro.step_start_time,
        }
        async with self._db.snapshot() as conn:
            rows = await rollout_store.ended_runs(
                conn,
                rec.tenant,
                versions=list(version_of.values()),
                variants=list(version_of),
                since=min(since.values()),
            )
        rows = sorted(
            (row for row in rows if row.end_time >= since[row.variant]), key=lambda r: r.end_time
        )
        runs = [
            EndedRun(
                row.variant,
                row.stop_reason,
                (row.end_time - row.create_time).total_seconds(),
                row.cost_pico,
                row.feedback_sum,
                row.feedback_count,
            )
            for row in rows
            if version_of[row.variant] == row.prompt_version
        ]
        result = analysis.analyse(
            ro,
            runs,
            now,
            min_samples=progress.min_sample_size(ro),
            consecutive_failures=progress.consecutive_failure_limit(ro),
        )
        row = AnalysisRow(
            rec.tenant,
            rec.id,
            now,
            result.step_index,
            result.verdict.value,
            json.dumps(codec.encode(result), sort_keys=True),
        )
        async with self._db.transaction() as conn:
            await rollout_store.insert_analysis(conn, row)
        self._analysed[resource_name(KIND, rec.tenant, rec.id)] = now
        self._notify()
        return result

    async def _learn_analysis_times(self, records: list[r.Record[r.Rollout]]) -> None:
        unknown: dict[str, list[str]] = {}
        for rec in records:
            if resource_name(KIND, rec.tenant, rec.id) not in self._analysed:
                unknown.setdefault(rec.tenant, []).append(rec.id)
        if not unknown:
            return
        async with self._db.snapshot() as conn:
            for tenant, ids in unknown.items():
                for id_, row in (await rollout_store.latest_analyses(conn, tenant, ids)).items():
                    self._analysed[resource_name(KIND, tenant, id_)] = row.analysis_time

    async def _system_move(self, name: str, change: progress.Change) -> None:
        before = await self._registry.modify(None, KIND, name, lambda rec: change(rec.spec))
        if before.spec.state.finished:
            self._analysed.pop(name, None)
        self._notify()


def _decode(row: AnalysisRow) -> AnalysisResult:
    return codec.decode(AnalysisResult, json.loads(row.result))
