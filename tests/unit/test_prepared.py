"""Statements run through storekit.prepared store exactly what SQLAlchemy would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from storekit import prepared
from storekit.types import UTCDateTime

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False),
    sa.Column("at", UTCDateTime, nullable=True),
    sa.Column("count", sa.Integer, nullable=False),
)
INSERT = items.insert()
BUMP = (
    items.update()
    .where(items.c.id == sa.bindparam("k_id"), items.c.name != "frozen")
    .values(count=items.c.count + 1, at=sa.bindparam("v_at", type_=UTCDateTime()))
    .returning(items.c.count)
)


def test_prepared_statements_bind_and_return_as_sqlalchemy_does() -> None:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    at = datetime(2026, 11, 28, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        prepared.run(
            conn,
            INSERT,
            [
                {"id": 1, "name": "a", "at": at, "count": 0},
                {"id": 2, "name": "frozen", "at": None, "count": 0},
            ],
        )
        conn.execute(INSERT, {"id": 3, "name": "c", "at": at, "count": 5})
        bumped = prepared.run(conn, BUMP, {"k_id": 1, "v_at": at})
        assert bumped.rows == [(1,)] and bumped.rowcount == 1
        frozen = prepared.run(conn, BUMP, {"k_id": 2, "v_at": at})
        assert frozen.rows == [] and frozen.rowcount == 0
        rows = conn.execute(sa.select(items).order_by(items.c.id)).all()
        raw = conn.exec_driver_sql("SELECT at FROM items ORDER BY id").all()
    assert rows[0].at == at.astimezone(UTC) and rows[0].count == 1
    assert rows[1].at is None and rows[1].count == 0
    assert raw[0] == raw[2], "stored in the very form SQLAlchemy stores it"


COUNT_OF = sa.select(items.c.count).where(items.c.id == sa.bindparam("k_id"))


def test_selects_return_rows_and_driver_errors_are_sqlalchemys() -> None:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        prepared.run(conn, INSERT, {"id": 1, "name": "a", "at": None, "count": 7})
        assert prepared.run(conn, COUNT_OF, {"k_id": 1}).rows == [(7,)]
        assert prepared.run(conn, COUNT_OF, {"k_id": 2}).rows == []
        with pytest.raises(sa.exc.IntegrityError):
            prepared.run(conn, INSERT, {"id": 1, "name": "again", "at": None, "count": 0})
