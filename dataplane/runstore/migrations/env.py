"""Alembic environment of the run store."""

from dataplane.runstore.schema import metadata
from storekit.alembic_env import run_migrations

run_migrations(metadata)
