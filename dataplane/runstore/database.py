"""The run store's database."""

from __future__ import annotations

from pathlib import Path

from storekit.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"

# Executors of a pool starting together migrate one at a time under this lock.
MIGRATION_LOCK = 0x72756E73


def open_run_database(url: str) -> Database:
    return Database(url, migrations=MIGRATIONS, migration_lock=MIGRATION_LOCK)
