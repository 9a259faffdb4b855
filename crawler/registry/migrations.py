"""Schema changes as an ordered list of small functions, each applied once and recorded in ``schema_migration``.

A fresh database gets the newest schema in one step (``create_all`` plus each engine's search index) and every
migration recorded as applied; an older registry runs the ones it has not had, in order. Both happen in one
transaction under a lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL), so that two
processes opening an old registry at once migrate it once, and a kill leaves it as it was. SQLite and
PostgreSQL both roll DDL back with the transaction.

A migration that adds to a table must check first: an old enough registry gets its missing tables in
``m001`` with today's columns.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from crawler.registry import schema
from crawler.registry.sql import columns, execute, execute_many
from crawler.registry.state import SCHEMA_VERSION, State, read_state
from crawler.registry.upsert import upsert
from data import base_models, load
from data.settings import CIVITAI

SOURCES = {
    "civitai": ("Civitai", CIVITAI),
    "hf": ("Hugging Face Hub", "https://huggingface.co"),
}
_PG_LOCK = 0x1A9A1D  # pg_advisory_xact_lock key: "only one migrator at a time" for this database

# Name search for `lookup` on SQLite: an FTS5 trigram index over normalised names (typos, substrings and CJK
# names all match), kept in step with the model table by triggers, and its vocabulary (term -> document
# count, so lookup can pick a query's rarest trigrams).
_SQLITE_SEARCH_INDEX = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS model_fts USING fts5(name_norm, creator, content='model', "
    "content_rowid='rowid', tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS model_fts_ai AFTER INSERT ON model BEGIN "
    "INSERT INTO model_fts(rowid, name_norm, creator) VALUES (new.rowid, new.name_norm, new.creator); END",
    "CREATE TRIGGER IF NOT EXISTS model_fts_ad AFTER DELETE ON model BEGIN "
    "INSERT INTO model_fts(model_fts, rowid, name_norm, creator) VALUES ('delete', old.rowid, old.name_norm, "
    "old.creator); END",
    "CREATE TRIGGER IF NOT EXISTS model_fts_au AFTER UPDATE OF name_norm, creator ON model BEGIN "
    "INSERT INTO model_fts(model_fts, rowid, name_norm, creator) VALUES ('delete', old.rowid, old.name_norm, "
    "old.creator); INSERT INTO model_fts(rowid, name_norm, creator) VALUES (new.rowid, new.name_norm, "
    "new.creator); END",
    "CREATE VIRTUAL TABLE IF NOT EXISTS model_fts_vocab USING fts5vocab(model_fts, row)",
]
# The same on PostgreSQL: pg_trgm (a trusted extension: a database owner may create it) and a GiST index, which
# answers "the k names nearest to this one" (ORDER BY <-> / <<-> LIMIT k) without scoring every name that
# shares a trigram: 40-85 ms on 200,000 names, where a GIN index plus ORDER BY similarity took 1.3 s.
_PG_SEARCH_INDEX = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS ix_model_name_norm_trgm ON model USING gist (name_norm gist_trgm_ops)",
]


def _search_index(conn: Connection, *, rebuild: bool) -> None:
    if conn.dialect.name == "sqlite":
        for statement in _SQLITE_SEARCH_INDEX:
            execute(conn, statement)
        if rebuild:  # index the rows written before the index existed
            execute(conn, "INSERT INTO model_fts(model_fts) VALUES ('rebuild')")
    else:
        for statement in _PG_SEARCH_INDEX:
            execute(conn, statement)


# -- the migrations, oldest first -------------------------------------------------------------------------------
_SCHEMA_5_TABLES = ["source", "family", "model", "version", "file", "inpaintlink", "samefile", "officialcheck",
                    "crawlrun", "crawllock", "meta"]  # fmt: skip


def m001_schema_5(conn: Connection) -> None:
    """The last layout of the unnumbered era (``meta.schema_version`` 5): older registries get the tables and
    the SQLite name index they lack, and lose the AutoV2 index (AutoV2 is found through the sha256 index)."""
    tables = [SQLModel.metadata.tables[name] for name in _SCHEMA_5_TABLES]
    SQLModel.metadata.create_all(conn, tables=tables)
    execute(conn, "DROP INDEX IF EXISTS ix_file_autov2")
    if conn.dialect.name == "sqlite":
        had_index = execute(conn, "SELECT 1 FROM sqlite_master WHERE name = 'model_fts'").first()
        _search_index(conn, rebuild=had_index is None)


def m002_official_sizes_64_bit(conn: Connection) -> None:
    """Official checkpoints are 4-7 GB: PostgreSQL's INTEGER (32-bit) refused their sizes. (SQLite's INTEGER
    is 64-bit already.)"""
    if conn.dialect.name == "postgresql":
        execute(conn, "ALTER TABLE officialcheck ALTER COLUMN size TYPE BIGINT")


def m003_postgresql_name_search(conn: Connection) -> None:
    """Fuzzy name search on PostgreSQL: pg_trgm's GiST index, where SQLite has FTS5."""
    if conn.dialect.name == "postgresql":
        _search_index(conn, rebuild=False)


def m004_artifacts(conn: Connection) -> None:
    """What `build` made or fetched (the artifact table)."""
    SQLModel.metadata.create_all(conn, tables=[schema.table_of(schema.Artifact)])


def m005_model_downloads(conn: Connection) -> None:
    """Each model's download count (what `build --missing` ranks by)."""
    if "downloads" not in columns(conn, "model"):  # m001 may have made it
        execute(conn, "ALTER TABLE model ADD COLUMN downloads BIGINT DEFAULT '0' NOT NULL")


def m006_route_checks(conn: Connection) -> None:
    """What the Hub crawl found for the inpainting routes' files (the routecheck table)."""
    SQLModel.metadata.create_all(conn, tables=[schema.table_of(schema.RouteCheck)])


def m007_job_runs(conn: Connection) -> None:
    """The last run of each team-mode build job: its worker and error (the jobrun table)."""
    SQLModel.metadata.create_all(conn, tables=[schema.table_of(schema.JobRun)])


def m008_name_indexes(conn: Connection) -> None:
    """Files found by their name, case aside (``lookup dreamshaper_8.safetensors``), and models by their name
    without spaces (``lookup juggernautxl``)."""
    execute(conn, "CREATE INDEX IF NOT EXISTS ix_file_name_lower ON file (lower(name))")
    execute(conn, "CREATE INDEX IF NOT EXISTS ix_model_name_compact ON model (replace(name_norm, ' ', ''))")


def m009_header_proofs(conn: Connection) -> None:
    """Proofs read from Civitai files' headers where metadata is ambiguous (the headerproof table)."""
    SQLModel.metadata.create_all(conn, tables=[schema.table_of(schema.HeaderProof)])


def m010_crawl_run_errors(conn: Connection) -> None:
    """Each crawl run's errors in detail (the first 50) and its header reads counted apart: read, unreadable,
    not read yet."""
    have = columns(conn, "crawlrun")  # m001 may have made them
    if "first_errors" not in have:
        execute(conn, "ALTER TABLE crawlrun ADD COLUMN first_errors VARCHAR")
    for name in ("headers_read", "headers_unreadable", "headers_deferred"):
        if name not in have:
            execute(conn, f"ALTER TABLE crawlrun ADD COLUMN {name} INTEGER DEFAULT '0' NOT NULL")


@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    apply: Callable[[Connection], None]


MIGRATIONS = [
    Migration(1, "schema 5: tables, SQLite name index", m001_schema_5),
    Migration(2, "64-bit official file sizes", m002_official_sizes_64_bit),
    Migration(3, "PostgreSQL trigram name index", m003_postgresql_name_search),
    Migration(4, "built and fetched checkpoints (artifact)", m004_artifacts),
    Migration(5, "model download counts", m005_model_downloads),
    Migration(6, "route file checks", m006_route_checks),
    Migration(7, "team-mode job runs", m007_job_runs),
    Migration(8, "file name and spaceless model name indexes", m008_name_indexes),
    Migration(9, "Civitai header proofs", m009_header_proofs),
    Migration(10, "crawl run errors and header read counts", m010_crawl_run_errors),
]
assert [m.id for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "state.SCHEMA_VERSION is out of date"


# -- applying them ----------------------------------------------------------------------------------------------
def _families() -> list[dict]:
    return load("families")["families"]


def _families_digest() -> str:
    return hashlib.sha256(repr(_families()).encode()).hexdigest()


def state_of(conn: Connection, where: str) -> State:
    """The registry's state (crawler.registry.state) through an SQLAlchemy connection."""
    return read_state(lambda sql: [tuple(r) for r in execute(conn, sql).all()], conn.dialect.name, where)


def _seeded(conn: Connection, state: State) -> bool:
    if state.fresh or "meta" not in state.tables:
        return False
    row = execute(conn, "SELECT value FROM meta WHERE key = 'families'").first()
    return row is not None and row[0] == _families_digest()


def _seed(conn: Connection) -> None:
    """Sources and the families of the bundled data (which change with new releases of inpaint-advisor)."""
    sources = [{"id": k, "name": n, "base_url": u} for k, (n, u) in SOURCES.items()]
    upsert(conn, schema.table_of(schema.Source), sources)
    upsert(conn, schema.table_of(schema.Family), [
        {"id": f["id"], "name": f["name"], "parent": f.get("parent"), "architecture": f["architecture"],
         "has_official_inpaint": bool(f.get("inpaint"))} for f in _families()
    ])  # fmt: skip
    _remap(conn)
    upsert(conn, schema.table_of(schema.Meta), [{"key": "families", "value": _families_digest()}])


def _remap(conn: Connection) -> None:
    """Models and versions take the family today's data gives their Civitai base model (stored without one, or
    with another: "Flux.1 Kontext" was FLUX.1's, and is its own family now): a newer inpaint-advisor knows more
    families, and an incremental crawl never sees the models that did not change."""
    mapping = [{"family": f["id"], "key": base_models.key(bm)} for f in _families() for bm in f["civitai_base_models"]]
    for table in ("version", "model"):
        execute_many(conn, f"UPDATE {table} SET family = %(family)s "  # noqa: S608 - a table name of ours
                     "WHERE lower(trim(base_model)) = %(key)s AND (family IS NULL OR family <> %(family)s)",
                     mapping)  # fmt: skip


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        execute(conn, "BEGIN IMMEDIATE")  # the write lock now, not at the first write: one migrator
    else:
        execute(conn, "SELECT pg_advisory_xact_lock(%(key)s)", key=_PG_LOCK)


def upgrade(engine: Engine, where: str) -> list[str]:
    """Bring the registry to the newest schema (creating it in an empty database); returns the names of the
    migrations this call applied (none when another process had just done it)."""
    with engine.connect() as conn:
        state = state_of(conn, where)
        if state.current and _seeded(conn, state):
            return []
        conn.rollback()
        _lock(conn)
        state = state_of(conn, where)  # again, under the lock: another process may have done it meanwhile
        applied = []
        if state.fresh:
            SQLModel.metadata.create_all(conn)
            _search_index(conn, rebuild=False)
            pending = MIGRATIONS
        else:
            pending = MIGRATIONS[state.version :]
            for migration in pending:
                migration.apply(conn)
                applied.append(migration.name)
            if schema.SchemaMigration.__tablename__ not in state.tables:
                SQLModel.metadata.create_all(conn, tables=[schema.table_of(schema.SchemaMigration)])
        now = datetime.now(UTC)
        execute_many(conn, "INSERT INTO schema_migration (id, name, applied_at) VALUES (%(id)s, %(name)s, %(now)s)",
                     [{"id": m.id, "name": m.name, "now": now} for m in pending])  # fmt: skip
        if not _seeded(conn, state):
            _seed(conn)
        conn.commit()
    if applied and engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            execute(conn, "PRAGMA optimize")
    return applied
