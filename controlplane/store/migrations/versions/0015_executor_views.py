"""Executors record which tenants' configuration they see, so the control plane can say
whether each holds what it should.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executors") as batch:
        batch.add_column(sa.Column("view", sa.String(63), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("executors") as batch:
        batch.drop_column("view")
