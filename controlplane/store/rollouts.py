"""What rollout analysis reads (the runs of a rollout's variants that ended since a
time, with their cost and feedback) and what it keeps (each analysis)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import feedback, rollout_analyses, run_index, usage_events


@dataclass(frozen=True)
class EndedRunRow:
    variant: str
    prompt_version: str
    stop_reason: str
    create_time: datetime
    end_time: datetime
    cost_pico: int
    feedback_sum: float
    feedback_count: int


async def ended_runs(
    conn: AsyncConnection,
    tenant: str,
    *,
    versions: Sequence[str],
    variants: Sequence[str],
    since: datetime,
) -> list[EndedRunRow]:
    """Runs of ``tenant`` on one of ``versions`` and ``variants`` that ended at or after
    ``since``, each with its summed cost and feedback."""
    cost = (
        sa.select(sa.func.coalesce(sa.func.sum(usage_events.c.cost_pico), 0))
        .where(usage_events.c.run_id == run_index.c.run_id, usage_events.c.tenant == tenant)
        .scalar_subquery()
    )
    scores = (
        sa.select(
            feedback.c.run_id,
            sa.func.sum(feedback.c.score).label("score_sum"),
            sa.func.count().label("score_count"),
        )
        .where(feedback.c.tenant == tenant)
        .group_by(feedback.c.run_id)
        .subquery()
    )
    query = (
        sa.select(
            run_index.c.variant,
            run_index.c.prompt_version,
            run_index.c.stop_reason,
            run_index.c.create_time,
            run_index.c.end_time,
            cost,
            sa.func.coalesce(scores.c.score_sum, 0.0),
            sa.func.coalesce(scores.c.score_count, 0),
        )
        .select_from(run_index.outerjoin(scores, scores.c.run_id == run_index.c.run_id))
        .where(
            run_index.c.tenant == tenant,
            run_index.c.end_time >= since,
            run_index.c.prompt_version.in_(list(versions)),
            run_index.c.variant.in_(list(variants)),
        )
    )
    return [
        EndedRunRow(r[0], r[1], r[2], r[3], r[4], int(r[5]), float(r[6]), int(r[7]))
        for r in await conn.execute(query)
    ]


@dataclass(frozen=True)
class AnalysisRow:
    tenant: str
    rollout_id: str
    analysis_time: datetime
    step_index: int
    verdict: str
    result: str
    """JSON text."""


_COLUMNS = [rollout_analyses.c[f] for f in AnalysisRow.__dataclass_fields__]


async def insert_analysis(conn: AsyncConnection, row: AnalysisRow) -> None:
    await conn.execute(rollout_analyses.insert().values(row.__dict__))


async def latest_analyses(
    conn: AsyncConnection, tenant: str, rollout_ids: Sequence[str]
) -> dict[str, AnalysisRow]:
    """The newest analysis of each of ``rollout_ids`` that has one."""
    if not rollout_ids:
        return {}
    newest = (
        sa.select(
            rollout_analyses.c.rollout_id,
            sa.func.max(rollout_analyses.c.analysis_time).label("newest"),
        )
        .where(
            rollout_analyses.c.tenant == tenant,
            rollout_analyses.c.rollout_id.in_(list(rollout_ids)),
        )
        .group_by(rollout_analyses.c.rollout_id)
        .subquery()
    )
    query = (
        sa.select(*_COLUMNS)
        .join(
            newest,
            sa.and_(
                rollout_analyses.c.rollout_id == newest.c.rollout_id,
                rollout_analyses.c.analysis_time == newest.c.newest,
            ),
        )
        .where(rollout_analyses.c.tenant == tenant)
    )
    return {r.rollout_id: AnalysisRow(*r) for r in await conn.execute(query)}
