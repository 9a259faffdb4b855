"""The registry's one query style: SQL text with named placeholders, ``%(name)s`` (psycopg's own, which
procrastinate's queries use too), handed to the driver itself on either engine, through SQLAlchemy's pool
(``execute``) or on `lookup`'s bare connection (``run``). For SQLite the placeholders become ``:name``.

A list value is expanded in place (``id IN (%(ids)s)``), an empty one to a query of no rows. Timestamps are stored
as SQLAlchemy's SQLite type stores them (naive UTC text), so rows written before this module read the same.

No SQLAlchemy import here: `lookup` starts without it.
"""

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

from crawler.registry.state import TABLES

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def sqlite_time(value: Any) -> Any:
    """A datetime as SQLite holds it (naive UTC text); anything else as it is."""
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")  # "0999-01-02 03:04:05.000000": strftime's %Y would not pad 999


def read_time(value: datetime | str | None) -> datetime | None:
    """A stored timestamp in UTC, as the records hold it: PostgreSQL hands back aware datetimes, SQLite its
    text (UTC, without a zone)."""
    if value is None:
        return None
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@cache
def _text(sql: str, dialect: str, lengths: tuple[tuple[str, int], ...]) -> str:
    sizes = dict(lengths)

    def placeholder(m: re.Match) -> str:
        name = m.group(1)
        if name is None:
            return "%%" if dialect == "postgresql" else "%"
        names = [name] if name not in sizes else [f"{name}_{i}" for i in range(sizes[name])]
        if not names:
            return "SELECT NULL WHERE 1 = 0"  # no row: x IN it holds for no x, x NOT IN it for every x
        return ", ".join(f"%({n})s" if dialect == "postgresql" else f":{n}" for n in names)

    return _PLACEHOLDER.sub(placeholder, sql)


def statement(sql: str, params: Mapping[str, Any], dialect: str) -> tuple[str, dict[str, Any]]:
    """``sql`` and ``params`` as ``dialect``'s driver takes them: lists expanded, SQLite's timestamps as text."""
    values: dict[str, Any] = {}
    lengths = []
    for name, value in params.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            items = list(value)
            lengths.append((name, len(items)))
            values.update((f"{name}_{i}", item) for i, item in enumerate(items))
        else:
            values[name] = value
    if dialect == "sqlite":
        values = {k: sqlite_time(v) for k, v in values.items()}
    return _text(sql, dialect, tuple(lengths)), values


def execute(conn, sql: str, params: Mapping[str, Any] | None = None, /, **named: Any):
    """Run ``sql`` on a SQLAlchemy connection (the registry's pool): a result with ``.all()``, ``.first()``,
    ``.scalar()``, ``.scalars()`` and ``.rowcount``, whose rows hold what the driver gave (see ``typed``)."""
    text, values = statement(sql, {**(params or {}), **named}, conn.dialect.name)
    return conn.exec_driver_sql(text, values)


_COLUMNS = {
    "sqlite": "SELECT name FROM pragma_table_info(%(table)s)",
    "postgresql": "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
    "AND table_name = %(table)s",
}


def columns(conn, table: str) -> set[str]:
    """The columns ``table`` has in this registry (an older one may lack the newer)."""
    return set(execute(conn, _COLUMNS[conn.dialect.name], table=table).scalars())


def tables(conn) -> set[str]:
    return set(execute(conn, TABLES[conn.dialect.name]).scalars())


def insert(conn, table: str, row: Mapping[str, Any], returning: str | None = None):
    """Insert one row (its keys are column names of ours), returning that column of it where asked."""
    columns = ", ".join(f'"{c}"' for c in row)
    values = ", ".join(f"%({c})s" for c in row)
    back = f" RETURNING {returning}" if returning else ""
    result = execute(conn, f'INSERT INTO "{table}" ({columns}) VALUES ({values}){back}', row)
    return result.scalar() if returning else None


def execute_many(conn, sql: str, rows: list[dict[str, Any]]) -> None:
    """One statement for many rows of the same keys (no list values), in one driver call."""
    if not rows:
        return
    text, _ = statement(sql, {}, conn.dialect.name)
    if conn.dialect.name == "sqlite" and any(isinstance(v, datetime) for r in rows for v in r.values()):
        rows = [{k: sqlite_time(v) for k, v in r.items()} for r in rows]
    conn.exec_driver_sql(text, rows)


def run(conn, dialect: str, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
    """Run ``sql`` on a bare driver connection (sqlite3 or psycopg), as `lookup`'s reader does: its rows."""
    text, values = statement(sql, params or {}, dialect)
    return list(conn.execute(text, values).fetchall())
