"""Registry revision counter and executor status, for xDS discovery.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    table = op.create_table(
        "registry_revision",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_revision"),
    )
    op.bulk_insert(table, [{"id": 1, "revision": 0}])
    op.create_table(
        "executors",
        sa.Column("node_id", sa.String(200), nullable=False),
        sa.Column("cluster", sa.String(200), nullable=False),
        sa.Column("connected", sa.Boolean, nullable=False),
        sa.Column("connected_since", TS, nullable=False),
        sa.Column("last_seen_time", TS, nullable=False),
        sa.Column("acked_version", sa.String(64), nullable=False),
        sa.Column("nacked_versions", sa.Text, nullable=False),
        sa.Column("last_nack_version", sa.String(64), nullable=False),
        sa.Column("last_nack_error", sa.Text, nullable=False),
        sa.Column("last_nack_time", TS, nullable=True),
        sa.PrimaryKeyConstraint("node_id", name="pk_executors"),
    )


def downgrade() -> None:
    op.drop_table("executors")
    op.drop_table("registry_revision")
