"""Filing, reading and listing eval reports, and the eval gate of a rollout."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from controlplane.auth.principal import Principal
from controlplane.errors import InvalidArgument, NotFound
from controlplane.evals.reports import CaseResult, Report, gate_blocks, scored
from controlplane.registry import codec, kinds, names
from controlplane.registry import resources as r
from controlplane.registry.pagination import decode_time_key, page_size, paginate, time_key
from controlplane.registry.service import Registry
from controlplane.store import eval_reports as report_store
from controlplane.store.database import Database
from controlplane.store.eval_reports import ReportRow

COLLECTION = "evalReports"


def report_name(tenant: str, id_: str) -> str:
    return names.child_name(tenant, COLLECTION, id_)


class EvalReports:
    def __init__(self, db: Database, registry: Registry) -> None:
        self._db = db
        self._registry = registry

    async def create(
        self, caller: Principal, parent: str, report_id: str, report: Report
    ) -> tuple[Report, bool]:
        tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        names.check_id(report_id, "report_id")
        if not report.suite:
            raise InvalidArgument.of("report.suite", "is required")
        suite_tenant = names.parse_child(report.suite, kinds.EVAL_SUITE.collection, "report.suite")
        if suite_tenant.tenant != tenant:
            raise InvalidArgument.of("report.suite", f"is not a suite of tenants/{tenant}")
        suite = await self._registry.get(caller, kinds.EVAL_SUITE, report.suite)
        await self._check_version(caller, suite, report.prompt_version)
        report = scored(
            Report(report_id, report.suite, report.suite_etag, report.prompt_version, report.cases),
            suite,
        )
        row = _row(tenant, report, caller.actor, datetime.now(UTC))
        async with self._db.transaction() as conn:
            stored = await report_store.insert(conn, row)
        return _report(stored), stored == row

    async def get(self, caller: Principal, name: str) -> Report:
        child = names.parse_child(name, COLLECTION, "name")
        caller.require_tenant(child.tenant)
        async with self._db.single_statement() as conn:
            row = await report_store.get(conn, child.tenant, child.id)
        if row is None:
            raise NotFound("EvalReport", name)
        return _report(row)

    async def list(
        self,
        caller: Principal,
        parent: str,
        *,
        suite: str,
        prompt_version: str,
        size: int,
        token: str,
    ) -> tuple[list[Report], str]:
        tenant = names.parse_tenant(parent, "parent")
        caller.require_tenant(tenant)
        suite_id = (
            names.parse_child(suite, kinds.EVAL_SUITE.collection, "suite").id if suite else None
        )
        limit = page_size(size)
        collection = f"evalReports:{parent}:{suite}:{prompt_version}"
        async with self._db.snapshot() as conn:
            rows = await report_store.page(
                conn,
                tenant,
                suite=suite_id,
                prompt_version=prompt_version or None,
                before=decode_time_key(token, collection),
                limit=limit + 1,
            )
        page, next_token = paginate(
            rows, limit, collection, lambda r: time_key(r.create_time, r.id)
        )
        return [_report(r) for r in page], next_token

    async def gate(self, tenant: str, ro: r.Rollout) -> str | None:
        """Why the rollout's eval gate holds it back now; None when it has none or
        lets it through."""
        gate = ro.eval_gate
        if gate is None:
            return None
        try:
            suite = await self._registry.get(None, kinds.EVAL_SUITE, gate.suite)
        except NotFound:
            return f"eval gate: suite {gate.suite} does not exist"
        async with self._db.snapshot() as conn:
            reports = [
                await report_store.newest(conn, tenant, suite.id, suite.etag, version)
                for version in (ro.candidate_version, ro.baseline_version)
            ]
        candidate, baseline = (_report(row) if row else None for row in reports)
        return gate_blocks(gate, candidate, baseline, ro.baseline_version)

    async def _check_version(
        self, caller: Principal, suite: r.Record[r.EvalSuite], version: str
    ) -> None:
        if not version:
            raise InvalidArgument.of("report.prompt_version", "is required")
        agent = await self._registry.get(caller, kinds.AGENT, suite.spec.agent)
        if not version.startswith(agent.spec.prompt + "/versions/"):
            raise InvalidArgument.of(
                "report.prompt_version",
                f"{version!r} is not a version of {agent.spec.prompt!r}, the prompt of the "
                f"suite's agent",
            )
        try:
            await self._registry.get(caller, kinds.PROMPT_VERSION, version)
        except NotFound:
            raise InvalidArgument.of(
                "report.prompt_version", f"{version!r} does not exist"
            ) from None


def _row(tenant: str, report: Report, actor: str, now: datetime) -> ReportRow:
    return ReportRow(
        tenant,
        report.id,
        names.parse_child(report.suite, kinds.EVAL_SUITE.collection, "report.suite").id,
        report.suite_etag,
        report.prompt_version,
        report.score,
        report.passed_cases,
        report.total_cases,
        actor,
        now,
        json.dumps(codec.encode(list(report.cases)), sort_keys=True),
    )


def _report(row: ReportRow) -> Report:
    cases = tuple(codec.decode(CaseResult, c) for c in json.loads(row.cases)) if row.cases else ()
    return Report(
        row.id,
        names.child_name(row.tenant, kinds.EVAL_SUITE.collection, row.suite),
        row.suite_etag,
        row.prompt_version,
        cases,
        score=row.score,
        passed_cases=row.passed_cases,
        total_cases=row.total_cases,
        actor=row.actor,
        create_time=row.create_time,
    )
