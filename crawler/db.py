"""Where the registry lives and how to open it.

The default is a SQLite file in the user's data dir; ``--db`` or ``INPAINT_ADVISOR_DB`` take a path or any
SQLAlchemy URL (``postgresql+psycopg://...``).
"""

import os

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from crawler import families
from crawler.location import ENV_VAR, default_db_path, resolve_db_url  # noqa: F401  (re-exported)
from crawler.schema import SCHEMA_VERSION, Family, Meta, Source

SOURCES = {
    "civitai": ("Civitai", "https://civitai.com"),
    "hf": ("Hugging Face Hub", "https://huggingface.co"),
}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets `lookup` read while a crawl writes; NORMAL sync is durable across process kills.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    # A page of the crawl writes a few MB: with the default 1,000-page threshold SQLite checkpointed (and
    # fsynced) the WAL on nearly every commit, and its 2 MB cache kept re-reading index pages.
    cur.execute("PRAGMA wal_autocheckpoint=20000")
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


_engines: dict[str, Engine] = {}


def get_engine(db: str | os.PathLike | None = None, *, init: bool = True) -> Engine:
    url = resolve_db_url(db)
    engine = _engines.get(url)
    if engine is None:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        _engines[url] = engine
        if init:
            init_db(engine)
    return engine


def init_db(engine: Engine) -> None:
    """Create missing tables and seed sources and families; cheap when already done."""
    with Session(engine) as session:
        try:
            current = session.get(Meta, "schema_version")
        except Exception:  # no tables yet
            current = None
        if current is not None and int(current.value) >= SCHEMA_VERSION:
            return
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX IF EXISTS ix_file_autov2"))  # schema 5 (same statement on PostgreSQL)
    with Session(engine) as session:
        for sid, (name, url) in SOURCES.items():
            session.merge(Source(id=sid, name=name, base_url=url))
        for fam in families.all_families():
            session.merge(
                Family(
                    id=fam["id"],
                    name=fam["name"],
                    parent=fam.get("parent"),
                    architecture=fam["architecture"],
                    has_official_inpaint=bool(fam.get("inpaint")),
                )
            )
        session.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        session.commit()
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            for statement in _SQLITE_SEARCH_INDEX:
                conn.execute(text(statement))
            conn.execute(text("PRAGMA optimize"))


# Name search for `lookup`: an FTS5 trigram index over normalised names (typos, substrings and CJK names all
# match), kept in step with the model table by triggers. SQLite only; elsewhere lookup scans names.
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
    # term -> document count, so lookup can pick a query's rarest trigrams
    "CREATE VIRTUAL TABLE IF NOT EXISTS model_fts_vocab USING fts5vocab(model_fts, row)",
    "INSERT INTO model_fts(model_fts) VALUES ('rebuild')",  # index rows written before this schema version
]


def session(db: str | os.PathLike | None = None) -> Session:
    return Session(get_engine(db))
