"""Registry, tenants, API keys and audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )
    op.create_table(
        "resources",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("id", sa.String(160), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "kind", "id", name="pk_resources"),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.id"], name="fk_resources_tenant_tenants", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "resource_refs",
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("from_kind", sa.String(32), nullable=False),
        sa.Column("from_id", sa.String(160), nullable=False),
        sa.Column("field", sa.String(200), nullable=False),
        sa.Column("to_kind", sa.String(32), nullable=False),
        sa.Column("to_id", sa.String(160), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "from_kind", "from_id", "field", name="pk_resource_refs"),
        sa.ForeignKeyConstraint(
            ["tenant", "from_kind", "from_id"],
            ["resources.tenant", "resources.kind", "resources.id"],
            name="fk_resource_refs_tenant_from_kind_from_id_resources",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "to_kind", "to_id"],
            ["resources.tenant", "resources.kind", "resources.id"],
            name="fk_resource_refs_tenant_to_kind_to_id_resources",
            ondelete="RESTRICT",
        ),
    )
    op.create_index("ix_resource_refs_target", "resource_refs", ["tenant", "to_kind", "to_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("expire_time", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.id"], name="fk_api_keys_tenant_tenants", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("time", TS, nullable=False),
        sa.Column("tenant", sa.String(63), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(300), nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_tenant", "audit_events", ["tenant"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("api_keys")
    op.drop_table("resource_refs")
    op.drop_table("resources")
    op.drop_table("tenants")
