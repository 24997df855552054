"""Bootstrap keys are registered once: the ids registered so far, kept after revocation.

Backfilled from the audit log's api_key.bootstrap records (each names apiKeys/{id}), so a
bootstrap key revoked before this migration stays revoked too.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bootstrap_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("register_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO bootstrap_keys (key_id, register_time) "
        "SELECT substr(resource, 9), min(time) FROM audit_events "
        "WHERE action = 'api_key.bootstrap' AND resource LIKE 'apiKeys/%' "
        "GROUP BY resource"
    )


def downgrade() -> None:
    op.drop_table("bootstrap_keys")
