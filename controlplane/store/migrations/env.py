"""Alembic environment of the control plane's store."""

from controlplane.store.schema import metadata
from storekit.alembic_env import run_migrations

run_migrations(metadata)
