"""Bulk, idempotent writes: ``INSERT ... ON CONFLICT (pk) DO UPDATE``, one statement per table per page.

SQLite and PostgreSQL share this syntax, so the statement is built once per table and handed straight to the
driver's ``executemany``: SQLAlchemy's per-row parameter processing cost more than the writes themselves.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from operator import itemgetter

from sqlalchemy import DateTime, Table
from sqlalchemy.engine import Connection

_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":{}"}


@cache
def _statement(table: Table, columns: tuple[str, ...], paramstyle: str) -> str:
    keys = [c.name for c in table.primary_key.columns]
    mark = _PLACEHOLDER[paramstyle]
    values = ", ".join(mark.format(i + 1) for i in range(len(columns)))
    quoted = ", ".join(f'"{c}"' for c in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in keys)
    conflict = ", ".join(f'"{k}"' for k in keys)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return f'INSERT INTO "{table.name}" ({quoted}) VALUES ({values}) ON CONFLICT ({conflict}) {action}'


def _sqlite_datetime(value: datetime | str | None) -> str | None:
    # The same text form SQLAlchemy's SQLite DateTime type writes and reads back (naive UTC); parsers may hand
    # that text over directly.
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


@cache
def _datetime_columns(table: Table, columns: tuple[str, ...]) -> frozenset[str]:
    # SQLModel's UTCDateTime is a TypeDecorator over DateTime
    return frozenset(c for c in columns if isinstance(getattr(table.c[c].type, "impl", table.c[c].type), DateTime))


def upsert(conn: Connection, table: Table, rows: Iterable[dict]) -> int:
    rows = list(rows)
    if not rows:
        return 0
    dialect = conn.dialect
    if dialect.name not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"upsert on {dialect.name}")
    columns = tuple(rows[0])
    sql = _statement(table, columns, dialect.paramstyle)
    pick = itemgetter(*columns)  # rows to parameter tuples at C speed: this loop was a tenth of a crawl
    params = list(map(pick, rows)) if len(columns) > 1 else [(pick(r),) for r in rows]
    dates = _datetime_columns(table, columns) if dialect.name == "sqlite" else ()
    if dates:
        idx = {i for i, c in enumerate(columns) if c in dates}
        if any(isinstance(p[i], datetime) for p in params for i in idx):
            params = [tuple(_sqlite_datetime(v) if i in idx else v for i, v in enumerate(p)) for p in params]
    conn.exec_driver_sql(sql, params)
    return len(rows)
