"""Bulk, idempotent writes: INSERT ... ON CONFLICT DO UPDATE on SQLite and PostgreSQL alike."""

from collections.abc import Iterable

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def upsert(conn: Connection, table: Table, rows: Iterable[dict]) -> int:
    rows = list(rows)
    if not rows:
        return 0
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"upsert on {dialect}")
    insert = (sqlite if dialect == "sqlite" else postgresql).insert(table)
    keys = [c.name for c in table.primary_key.columns]
    columns = [c for c in rows[0] if c not in keys]
    stmt = insert.on_conflict_do_update(index_elements=keys, set_={c: insert.excluded[c] for c in columns})
    conn.execute(stmt, rows)
    return len(rows)
