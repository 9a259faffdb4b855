"""A fresh PostgreSQL database per test, on the server named by ``INPAINT_ADVISOR_TEST_PG`` (an SQLAlchemy URL
of a database that may create others, e.g. ``postgresql+psycopg://postgres@127.0.0.1:55432/postgres``;
`.ci/postgres` starts one). Without it, PostgreSQL cases skip, except under ``CI=true``, where that is a failure:
CI must prove both engines."""

import contextlib
import os
import uuid
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
    import atexit

    import psycopg

    from crawler import registry
    from crawler.registry.engine import close_all

    if url not in _templates:
        name = f"ia_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(_conninfo(url), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        registry.connect(_with_database(url, name))
        close_all()  # a template may have no open connection while it is copied
        _templates[url] = name

        def drop() -> None:
            with contextlib.suppress(Exception), psycopg.connect(_conninfo(url), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        atexit.register(drop)
    return _templates[url]


def kept_copy_of_template(prefix: str = "ia_master") -> str:
    """The URL of a new registry of the current schema that stays for the rest of this process (dropped at
    exit): a master that tests fill once and then copy (``fresh_database(template=...)``)."""
    import atexit

    import psycopg

    url = server_url()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_conninfo(url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_migrated_template(url)}"')

    def drop() -> None:
        with contextlib.suppress(Exception), psycopg.connect(_conninfo(url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
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
