"""The outbox is relayed by claims: any executor of the pool may take a batch for a while
(``claimed_by``, ``claim_expires_at``) and deletes it once the control plane has it. Ids
grow to name a run's event ("{run}:{sequence}"); ``executor`` names the one that held the
run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.drop_index("ix_outbox_relayed_at_created_at", table_name="outbox")
    # Delivered records are deleted from now on; those delivered before go now.
    op.execute("DELETE FROM outbox WHERE relayed_at IS NOT NULL")
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("id", type_=sa.String(80), existing_nullable=False)
        batch.drop_column("relayed_at")
        batch.add_column(sa.Column("claimed_by", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("claim_expires_at", TS, nullable=True))
        batch.add_column(sa.Column("executor", sa.String(200), nullable=False, server_default=""))
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_created_at", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("executor")
        batch.drop_column("claim_expires_at")
        batch.drop_column("claimed_by")
        batch.add_column(sa.Column("relayed_at", TS, nullable=True))
        batch.alter_column("id", type_=sa.String(36), existing_nullable=False)
    op.create_index("ix_outbox_relayed_at_created_at", "outbox", ["relayed_at", "created_at"])
