"""The control plane's database."""

from __future__ import annotations

from pathlib import Path

from storekit.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"

# Any fixed number: replicas starting together take this lock so one migrates at a time.
MIGRATION_LOCK = 0x70696C6F74


def open_database(url: str) -> Database:
    return Database(url, migrations=MIGRATIONS, migration_lock=MIGRATION_LOCK)


__all__ = ["Database", "open_database"]
