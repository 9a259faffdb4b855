"""Bulk, idempotent writes: ``INSERT ... ON CONFLICT (pk) DO UPDATE``, one statement per table per page.

SQLite and PostgreSQL share this syntax, so the statement is built once per table and handed straight to the
driver's ``executemany``: SQLAlchemy's per-row parameter processing cost more than the writes themselves.
"""

from collections.abc import Iterable
from functools import cache

from sqlalchemy import Table
from sqlalchemy.engine import Connection

from crawler.registry.sql import execute_many


@cache
def _statement(table: Table, columns: tuple[str, ...]) -> str:
    keys = [c.name for c in table.primary_key.columns]
    quoted = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(f"%({c})s" for c in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in keys)
    conflict = ", ".join(f'"{k}"' for k in keys)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return f'INSERT INTO "{table.name}" ({quoted}) VALUES ({values}) ON CONFLICT ({conflict}) {action}'


def upsert(conn: Connection, table: Table, rows: Iterable[dict]) -> int:
    """Insert or update ``rows`` (dicts of the same keys, of column names) in one driver call."""
    rows = list(rows)
    if not rows:
        return 0
    if conn.dialect.name not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"upsert on {conn.dialect.name}")
    execute_many(conn, _statement(table, tuple(rows[0])), rows)
    return len(rows)
