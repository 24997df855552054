"""Approvals of calls whose outcome is unknown: a request's kind, the decision made,
the result a person gave, the attempt in question.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(20), nullable=False, server_default="tool_call")
        )
        batch.add_column(sa.Column("decision", sa.String(20), nullable=False, server_default=""))
        batch.add_column(sa.Column("result", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("attempt", sa.Integer, nullable=False, server_default="0"))
    # Decisions made before kinds existed say what they were.
    op.execute(
        "UPDATE approvals SET decision = CASE state WHEN 'approved' THEN 'approve' "
        "WHEN 'denied' THEN 'deny' ELSE '' END"
    )


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        for column in ("attempt", "result", "decision", "kind"):
            batch.drop_column(column)
