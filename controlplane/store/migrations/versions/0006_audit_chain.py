"""The audit log becomes hash-chained per tenant: each record gets its chain, sequence,
previous hash and hash (records already there are chained in the order they were
written), and each chain its head.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pilothouse.auditchain import GENESIS, link
from storekit.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("chain", sa.String(63), nullable=False, server_default="-"))
        batch.add_column(sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("prev_hash", sa.String(64), nullable=False, server_default=GENESIS)
        )
        batch.add_column(sa.Column("hash", sa.String(64), nullable=False, server_default=""))
    op.create_table(
        "audit_heads",
        sa.Column("chain", sa.String(63), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name="pk_audit_heads"),
    )
    bind = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("time", UTCDateTime()),
        *(
            sa.column(c)
            for c in (
                "id",
                "tenant",
                "actor",
                "action",
                "resource",
                "details",
                "event_id",
                "chain",
                "seq",
                "prev_hash",
                "hash",
            )
        ),
    )
    heads: dict[str, tuple[int, str]] = {}
    rows = bind.execute(
        sa.select(
            events.c.id,
            events.c.time,
            events.c.tenant,
            events.c.actor,
            events.c.action,
            events.c.resource,
            events.c.details,
            events.c.event_id,
        ).order_by(events.c.id)
    ).all()
    for id_, time, tenant, actor, action, resource, details, event_id in rows:
        chain = tenant or "-"
        seq, prev = heads.get(chain, (0, GENESIS))
        digest = link(chain, seq + 1, time, actor, action, resource, details, event_id or "", prev)
        bind.execute(
            events.update()
            .where(events.c.id == id_)
            .values(chain=chain, seq=seq + 1, prev_hash=prev, hash=digest)
        )
        heads[chain] = (seq + 1, digest)
    if heads:
        bind.execute(
            sa.table("audit_heads", sa.column("chain"), sa.column("seq"), sa.column("hash"))
            .insert()
            .values([{"chain": c, "seq": s, "hash": h} for c, (s, h) in heads.items()])
        )
    with op.batch_alter_table("audit_events") as batch:
        for column in ("chain", "seq", "prev_hash", "hash"):
            batch.alter_column(column, server_default=None)
        batch.create_unique_constraint("uq_audit_events_chain_seq", ["chain", "seq"])


def downgrade() -> None:
    op.drop_table("audit_heads")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_chain_seq", type_="unique")
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
        batch.drop_column("chain")
