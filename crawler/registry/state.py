"""Is this database a registry, and of which schema version? Told with plain SQL over any DB-API cursor, so
that `lookup` can ask without importing SQLAlchemy.

Versions count the migrations applied (``crawler.registry.migrations``), recorded in ``schema_migration``.
Registries made before that table existed (schema 5 of the old numbering, in ``meta``) are version 0: every
migration is still to run.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from crawler.registry.errors import NewerRegistry, NotARegistry

SCHEMA_VERSION = 10  # len(migrations.MIGRATIONS); checked there
MIGRATION_TABLE = "schema_migration"
LEGACY_TABLES = {"model", "meta"}  # what a registry made before migrations always has

# in the registry's query style (crawler.registry.sql): ``%%`` is a literal percent sign
TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%%'",
    "postgresql": "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()",
}

Query = Callable[[str], list[tuple]]


@dataclass
class State:
    version: int  # migrations applied
    fresh: bool  # an empty database: nothing to migrate, everything to create
    tables: set[str] = field(default_factory=set)

    @property
    def current(self) -> bool:
        return not self.fresh and self.version == SCHEMA_VERSION


def read_state(query: Query, dialect: str, where: str) -> State:
    """``query(sql)`` runs a query of the registry's style and returns all its rows. Raises NotARegistry for
    another program's database and NewerRegistry for a registry this code cannot safely read or change."""
    tables = {row[0] for row in query(TABLES[dialect])}
    if not tables:
        return State(0, True)
    if MIGRATION_TABLE in tables:
        version = query(f"SELECT max(id) FROM {MIGRATION_TABLE}")[0][0] or 0
    elif tables >= LEGACY_TABLES:
        version = 0
    else:
        shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        raise NotARegistry(f"{where} is a database, but not an inpaint-advisor registry (its tables: {shown})")
    if version > SCHEMA_VERSION:
        raise NewerRegistry(
            f"the registry at {where} has schema version {version}, newer than this inpaint-advisor knows "
            f"({SCHEMA_VERSION}): upgrade inpaint-advisor to use it"
        )
    return State(version, False, tables)
