"""A fresh PostgreSQL database per test, on the server named by ``INPAINT_ADVISOR_TEST_PG`` (an SQLAlchemy URL
of a database that may create others, e.g. ``postgresql+psycopg://postgres@127.0.0.1:55432/postgres``;
`.ci/postgres` starts one). Without it, PostgreSQL cases skip, except under ``CI=true``, where that is a failure:
CI must prove both engines."""

import contextlib
import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

ENV = "INPAINT_ADVISOR_TEST_PG"


def server_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        message = f"no PostgreSQL test server: set {ENV} (see docs/development.md) to run the PostgreSQL cases"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; under CI=true a skipped PostgreSQL case is a failure")
        pytest.skip(message)
    return url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


def _conninfo(url: str) -> str:
    return "postgresql" + url[url.index("://") :]


_templates: dict[str, str] = {}  # server URL -> this process's migrated template database


def _migrated_template(url: str) -> str:
    """A database migrated to the current schema once per test process, copied for each test that wants a
    registry (CREATE DATABASE ... TEMPLATE): cheaper than migrating a new database every time."""

    import psycopg

    from crawler import registry
    from crawler.registry.engine import close_all

    if url not in _templates:
        name = f"ia_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(_conninfo(url), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        registry.open(_with_database(url, name))
        close_all()  # a template may have no open connection while it is copied
        _templates[url] = name
        _drop_at_exit(url, name)
    return _templates[url]


_FINGERPRINT = """
SELECT md5(string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || coalesce(a.cols, ''), ','
                      ORDER BY n.nspname, c.relname)
           || coalesce((SELECT string_agg(conname || contype::text || pg_get_constraintdef(oid), ',' ORDER BY conname)
                        FROM pg_constraint WHERE connamespace = 'public'::regnamespace), '')
           || coalesce((SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE NOT tgisinternal), '')
           || coalesce((SELECT string_agg(proname, ',' ORDER BY proname) FROM pg_proc
                        WHERE pronamespace = 'public'::regnamespace), '')
           || coalesce((SELECT string_agg(adrelid::text || pg_get_expr(adbin, adrelid), ',' ORDER BY adrelid, adnum)
                        FROM pg_attrdef), ''))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN (SELECT attrelid, string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull::text,
                                       ';' ORDER BY attnum) AS cols
           FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped GROUP BY attrelid) a ON a.attrelid = c.oid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%'
  AND n.nspname NOT LIKE 'pg_toast_temp%'
"""


@dataclass
class _Pristine:
    """What a migrated registry holds before any test: its schema's fingerprint and its seed rows."""

    fingerprint: str
    tables: list[str]
    seeds: dict[str, tuple[list[str], list[tuple]]]  # table -> (columns, rows)


def _pristine(conn) -> _Pristine:
    tables = [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]  # fmt: skip
    seeds = {}
    for table in tables:
        cur = conn.execute(f'SELECT * FROM "{table}"')
        rows = cur.fetchall()
        if rows:
            seeds[table] = ([d.name for d in cur.description], rows)
    return _Pristine(conn.execute(_FINGERPRINT).fetchone()[0], tables, seeds)


_reusable: dict[str, tuple[str, _Pristine]] = {}  # server URL -> this process's reusable registry, as it began


def _reset(url: str, name: str, pristine: _Pristine) -> bool:
    """Empty the registry a test used back to how it began, when its schema is unchanged (no migration, no
    queue tables): TRUNCATE and the seed rows again, a few milliseconds against a copy's 0.3 s. False when the
    schema changed (the caller drops it)."""
    import psycopg

    with psycopg.connect(_conninfo(url), autocommit=True) as admin:  # connections the test left behind
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND pid <> pg_backend_pid()", (name,))  # fmt: skip
    with psycopg.connect(_conninfo(_with_database(url, name))) as conn:
        if conn.execute(_FINGERPRINT).fetchone()[0] != pristine.fingerprint:
            return False
        conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in pristine.tables) + " RESTART IDENTITY CASCADE")
        for (sequence,) in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall():
            conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')  # owned or not: every counter starts again
        for table, (columns, rows) in pristine.seeds.items():
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join(["%s"] * len(columns))
            with conn.cursor() as cur:
                cur.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)
    return True


@contextlib.contextmanager
def reused_registry():
    """Yields the URL of a migrated registry for one test: like ``fresh_database(migrated=True)``, but the
    database is emptied back to its first state afterwards and given to this process's next test, unless the
    test changed the schema (then it is dropped, and the next test gets a new copy)."""
    import psycopg

    from crawler.registry.engine import close_all

    url = server_url()
    if url not in _reusable:
        name = f"ia_reused_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(_conninfo(url), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_migrated_template(url)}"')
        with psycopg.connect(_conninfo(_with_database(url, name)), autocommit=True) as conn:
            _reusable[url] = (name, _pristine(conn))
        _drop_at_exit(url, name)
    name, pristine = _reusable[url]
    try:
        yield _with_database(url, name)
    finally:
        close_all()
        if not _reset(url, name, pristine):
            del _reusable[url]
            with psycopg.connect(_conninfo(url), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_at_exit(url: str, name: str) -> None:
    import atexit

    import psycopg

    def drop() -> None:
        with contextlib.suppress(Exception), psycopg.connect(_conninfo(url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)


def kept_copy_of_template(prefix: str = "ia_master") -> str:
    """The URL of a new registry of the current schema that stays for the rest of this process (dropped at
    exit): a master that tests fill once and then copy (``fresh_database(template=...)``)."""
    import psycopg

    url = server_url()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_conninfo(url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_migrated_template(url)}"')
    _drop_at_exit(url, name)
    return _with_database(url, name)


@contextlib.contextmanager
def fresh_database(server: str | None = None, prefix: str = "ia_test", *, migrated: bool = False,
                   template: str | None = None):  # fmt: skip
    """Yields the SQLAlchemy URL of a new database on ``server`` (default: the test server), dropped afterwards:
    empty, or with ``migrated`` already a registry of the current schema (a copy of a template made once), or
    a copy of the database at URL ``template`` (which must have no connection open).
    Benchmarks use it too: they never touch the database they were pointed at."""
    import psycopg

    from crawler.registry.engine import close_all

    url = server or server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    if template is not None:
        template = f' TEMPLATE "{urlsplit(template).path.lstrip("/")}"'
    else:
        template = f' TEMPLATE "{_migrated_template(url)}"' if migrated else ""
    with psycopg.connect(_conninfo(url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{template}')
    try:
        yield _with_database(url, name)
    finally:
        close_all()
        with psycopg.connect(_conninfo(url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_sql(url: str, sql: str) -> None:
    """A script of SQL statements (a pg_dump --inserts file) run in one go."""
    import psycopg

    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute(sql)


def all_text(url: str) -> str:
    """Every row of every table as text (what a token must never be found in)."""
    import psycopg

    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]  # fmt: skip
        return "\n".join(str(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))
