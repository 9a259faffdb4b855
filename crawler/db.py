"""Where the registry lives and how to open it.

The default is a SQLite file in the user's data dir; ``--db`` or ``INPAINT_ADVISOR_DB`` take a path or any
SQLAlchemy URL (``postgresql+psycopg://...``).
"""

import os
from pathlib import Path

from platformdirs import user_data_dir
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from crawler import families
from crawler.schema import SCHEMA_VERSION, Family, Meta, Source

ENV_VAR = "INPAINT_ADVISOR_DB"

SOURCES = {
    "civitai": ("Civitai", "https://civitai.com"),
    "hf": ("Hugging Face Hub", "https://huggingface.co"),
}


def default_db_path() -> Path:
    return Path(user_data_dir("inpaint-advisor", appauthor=False)) / "registry.db"


def resolve_db_url(db: str | os.PathLike | None = None) -> str:
    """``db`` (a path or URL) beats ``$INPAINT_ADVISOR_DB`` beats the data-dir default."""
    value = str(db) if db else os.environ.get(ENV_VAR) or str(default_db_path())
    if "://" in value:
        return value
    path = Path(value).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets `lookup` read while a crawl writes; NORMAL sync is durable across process kills.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
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
            conn.execute(text("PRAGMA optimize"))


def session(db: str | os.PathLike | None = None) -> Session:
    return Session(get_engine(db))
