"""The registry layer on both engines: migrations from what main made, refusal of a newer schema, one migrator
at a time, and one clear line for each way a registry cannot be opened."""

import shutil
import subprocess
import sys
import time

import pytest
from sqlalchemy import inspect, text

from advisor.advice.lookup import lookup
from crawler import registry
from crawler.registry import engine as registry_engine
from crawler.registry.migrations import _PG_LOCK, MIGRATIONS
from crawler.registry.state import SCHEMA_VERSION
from tests import pg
from tests.conftest import ROOT, cli_env, run_cli

LEGACY = ROOT / "tests" / "fixtures" / "legacy"
CONTENT = ["model", "version", "file", "inpaintlink", "samefile", "officialcheck", "crawlrun", "source", "family"]


@pytest.fixture
def legacy_db(empty_db):
    """The registry as the code on main at 69bbd5e left it (a Civitai crawl and a Hugging Face crawl)."""
    if "://" in empty_db:
        pg.run_sql(empty_db, (LEGACY / "registry-v5.pg.sql").read_text())
    else:
        shutil.copy(LEGACY / "registry-v5.sqlite", empty_db)
    return empty_db


def rows_of(db: str) -> dict[str, list]:
    engine = registry.open(db, "read").engine
    with engine.connect() as conn:
        found = {t: sorted(map(tuple, conn.execute(text(f"SELECT * FROM {t}")).all()), key=repr) for t in CONTENT}
    registry_engine.close_all()
    return found


def test_a_registry_made_by_main_upgrades_in_place_with_every_row_kept(legacy_db):
    before = rows_of(legacy_db)
    assert len(before["model"]) == 22 and before["crawlrun"]  # the stored copy really holds a crawl
    applied = registry_engine.migrations.upgrade(registry_engine._make_engine(registry.locate(legacy_db), False),
                                                 "test")  # fmt: skip
    assert applied == [m.name for m in MIGRATIONS]
    after = rows_of(legacy_db)
    assert all(r[-1] == 0 for r in after["model"])  # m005's download count, 0 until the next crawl writes it
    after["model"] = sorted((r[:-1] for r in after["model"]), key=repr)
    assert all(r[-4:] == (None, 0, 0, 0) for r in after["crawlrun"])  # m010's error detail and header counts
    after["crawlrun"] = sorted((r[:-4] for r in after["crawlrun"]), key=repr)
    seeded = ("family", "source")  # re-seeded from the bundled data (Civitai's base moved to civitai.red)
    assert {t: after[t] for t in CONTENT if t not in seeded} == {t: before[t] for t in CONTENT if t not in seeded}
    assert set(before["family"]) <= set(after["family"])  # none lost
    assert [r[0] for r in after["source"]] == [r[0] for r in before["source"]]
    engine = registry.open(legacy_db).engine
    with engine.connect() as conn:
        assert conn.execute(text("SELECT max(id), count(*) FROM schema_migration")).one() == (SCHEMA_VERSION,) * 2
    # what main could not store on PostgreSQL (a 4 GB official file size) now fits
    with engine.begin() as conn:
        conn.execute(text("UPDATE officialcheck SET size = 4265437280"))
    # and the upgraded registry answers as before, name search included
    answer = lookup("majicmix realistic v7", db=legacy_db, offline=True)
    assert answer.recommendation.kind == "own-release" and answer.match.model_id == "civitai:43331"
    assert lookup("majicmix realstic", db=legacy_db, offline=True).match.model_id == "civitai:43331"


def _sqlite_affinity(declared: str) -> str:
    """SQLite stores by type affinity: INTEGER and BIGINT columns are the same 64-bit integers."""
    return "INTEGER" if "INT" in declared.upper() else declared


def _schema(db: str) -> dict:
    engine = registry.open(db).engine
    kind = _sqlite_affinity if engine.dialect.name == "sqlite" else str
    with engine.connect() as conn:
        insp = inspect(conn)
        tables = {
            t: ({c["name"]: (kind(str(c["type"])), c["nullable"]) for c in insp.get_columns(t)},
                sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
                sorted(tuple(k["constrained_columns"]) for k in insp.get_foreign_keys(t)))
            for t in insp.get_table_names()
        }  # fmt: skip
        # and what reflection skips: the search index, expression indexes (lower(name), spaceless names)
        if engine.dialect.name == "sqlite":
            extras = sorted(r[0] for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE (type IN ('trigger', 'table') AND name LIKE 'model_fts%') "
                "OR (type = 'index' AND sql LIKE '%(%(%')"))
        else:
            extras = sorted(r[0] for r in conn.execute(text(
                "SELECT indexdef FROM pg_indexes WHERE indexname LIKE '%trgm%' OR indexdef LIKE '%(%(%'")))  # fmt: skip
    registry_engine.close_all()
    return {"tables": tables, "extras": extras}


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_a_fresh_registry_and_an_upgraded_one_have_the_same_schema(legacy_db, tmp_path):
    upgraded = _schema(legacy_db)
    if "://" in legacy_db:
        with pg.fresh_database() as fresh:
            created = _schema(fresh)
    else:
        created = _schema(str(tmp_path / "fresh.db"))
    assert upgraded == created
    assert created["extras"]  # the engine's name index is part of what is compared
    assert sum("ix_file_name_lower" in e or "ix_model_name_compact" in e for e in created["extras"]) == 2


def test_a_registry_newer_than_the_code_is_refused_clearly(registry_db):
    engine = registry.open(registry_db).engine
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO schema_migration (id, name, applied_at) VALUES (:id, 'from the future', "
                          "CURRENT_TIMESTAMP)"), {"id": SCHEMA_VERSION + 1})  # fmt: skip
    registry_engine.close_all()
    for mode in registry.MODES:
        if mode == "queue" and "://" not in registry_db:  # refused first for what it is: no queue on SQLite
            with pytest.raises(registry.TeamModeNeedsPostgres):
                registry.open(registry_db, mode)
            continue
        with pytest.raises(registry.NewerRegistry, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
            registry.open(registry_db, mode)
    env = cli_env(INPAINT_ADVISOR_DB=registry_db)
    for args in (["lookup", "majicmix", "--offline"], ["status"], ["crawl", "civitai", "--max-pages", "1"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert "newer than this inpaint-advisor knows" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


MIGRATE = """
import sys
from crawler.registry import engine
applied = engine.migrations.upgrade(engine._make_engine(engine.locate(sys.argv[1]), False), "child")
print(len(applied))
"""


def test_two_processes_opening_an_old_registry_at_once_migrate_it_once(legacy_db):
    """The test holds the migrators' lock while both start, so both find the registry old and wait; then one
    migrates and the other, under the lock, finds nothing left to do."""
    if "://" in legacy_db:
        import psycopg

        holder = psycopg.connect(pg._conninfo(legacy_db), autocommit=True)
        holder.execute("SELECT pg_advisory_lock(%s)", (_PG_LOCK,))
        release = lambda: holder.execute("SELECT pg_advisory_unlock(%s)", (_PG_LOCK,))  # noqa: E731
    else:
        import sqlite3

        holder = sqlite3.connect(legacy_db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        release = lambda: holder.execute("COMMIT")  # noqa: E731
    command = [sys.executable, "-c", MIGRATE, legacy_db]
    children = [subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]  # fmt: skip
    try:
        time.sleep(1.5)  # both past their first look, waiting for the lock
        assert all(c.poll() is None for c in children), [c.communicate() for c in children]
        release()
        results = [c.communicate(timeout=60) for c in children]
    finally:
        holder.close()
    assert all(c.returncode == 0 for c in children), results
    assert sorted(int(out) for out, _ in results) == [0, SCHEMA_VERSION]
    engine = registry.open(legacy_db).engine
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_migration")).scalar_one() == SCHEMA_VERSION


def test_read_only_commands_read_an_old_registry_as_it_is(legacy_db):
    env = cli_env(INPAINT_ADVISOR_DB=legacy_db)
    status = run_cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert run_cli("lookup", "civitai:43331", "--offline", env=env).returncode == 0
    engine = registry_engine._make_engine(registry.locate(legacy_db), True)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert "schema_migration" not in tables  # nothing was changed by reading


@pytest.mark.parametrize("args", [["lookup", "majicmix"], ["status"], ["crawl", "civitai", "--max-pages", "1"]])
def test_a_postgresql_server_that_does_not_answer_is_one_line_and_exit_2(args):
    env = cli_env(INPAINT_ADVISOR_DB="postgresql+psycopg://someone:hunter2@127.0.0.1:9/registry")
    t0 = time.monotonic()
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "cannot reach the registry at postgresql+psycopg://someone:***@127.0.0.1:9/registry" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert time.monotonic() - t0 < 30


NO_DRIVER = """
import sys
sys.modules["psycopg"] = None  # as if the postgres extra were not installed
sys.argv = ["inpaint-advisor", *sys.argv[1:]]
from advisor.cli.fastpath import main
main()
"""


@pytest.mark.parametrize("args", [["lookup", "majicmix"], ["status"]])
def test_without_the_driver_the_error_says_what_to_install(args):
    env = cli_env(INPAINT_ADVISOR_DB="postgresql+psycopg://u@127.0.0.1:9/r")
    result = subprocess.run([sys.executable, "-c", NO_DRIVER, *args], capture_output=True, text=True, env=env,
                            cwd=ROOT)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "pip install 'inpaint-advisor[postgres]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["mysql://u@host/db", "postgresql+psycopg2://u@host/db", "sqlite://"])
def test_an_unsupported_registry_url_is_a_usage_error(url):
    result = run_cli("status", env=cli_env(INPAINT_ADVISOR_DB=url))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not supported" in result.stderr or "psycopg driver" in result.stderr or "file path" in result.stderr


def _sqlite_fixture_of(kind: str, path):
    if kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 64)
    elif kind == "a directory":
        path.mkdir()
    elif kind == "another program's SQLite file":
        import sqlite3

        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    elif kind == "a text file":
        path.write_text("registry = yes\n")


@pytest.mark.parametrize("kind, message", [
    ("random bytes", "is not a SQLite database"),
    ("a directory", "is a directory, not a registry file"),
    ("another program's SQLite file", "not an inpaint-advisor registry (its tables: customers)"),
    ("a text file", "is not a SQLite database"),
])  # fmt: skip
@pytest.mark.parametrize("args", [["lookup", "majicmix"], ["status"], ["crawl", "civitai", "--max-pages", "1"]])
def test_a_registry_path_that_holds_something_else_is_named_and_left_alone(tmp_path, kind, message, args):
    path = tmp_path / "registry.db"
    _sqlite_fixture_of(kind, path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(*args, "--offline" if args[0] == "lookup" else "--json", env=cli_env(INPAINT_ADVISOR_DB=str(path)))
    assert result.returncode == 2, result.stderr
    output = result.stderr if args[0] == "lookup" else result.stdout
    assert message in output and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -wal, no -shm, nothing created
    if kind == "another program's SQLite file":
        import sqlite3

        with sqlite3.connect(path) as conn:
            assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["customers"]


def test_read_only_commands_never_create_a_registry(tmp_path):
    path = tmp_path / "sub" / "registry.db"
    env = cli_env(INPAINT_ADVISOR_DB=str(path))
    status = run_cli("status", env=env)
    assert status.returncode == 1 and "no registry at" in status.stderr and "crawl civitai" in status.stderr
    lookup_result = run_cli("lookup", "SDXL 1.0", "--offline", env=env)  # bundled data still answers
    assert lookup_result.returncode == 0
    empty = run_cli("lookup", "majicmix realistic", "--offline", env=env)
    assert empty.returncode == 1 and "no registry at" in empty.stdout and empty.stdout.count("matched") == 1
    assert not path.parent.exists()


def test_an_empty_registry_says_so_once(tmp_path):
    path = tmp_path / "registry.db"
    registry.open(str(path))
    result = run_cli("lookup", "majicmix realistic", "--offline", env=cli_env(INPAINT_ADVISOR_DB=str(path)))
    assert result.returncode == 1
    assert "is empty: fill it with" in result.stdout and "offline: Civitai was not asked" in result.stdout
    assert result.stdout.count("matched") == 1


def test_a_registry_on_a_read_only_medium_can_still_be_read(tmp_path, read_only_dir, serve):
    from crawler import civitai
    from crawler.http import RetryPolicy
    from tests.civitai_fake import FakeCivitai, load_fixture

    def fill(folder):
        civitai.crawl(registry.open(str(folder / "registry.db")), base_url=serve(FakeCivitai(load_fixture())),
                      policy=RetryPolicy(attempts=2, base_delay=0.001))  # fmt: skip
        registry_engine.close_all()

    folder = read_only_dir(fill)
    env = cli_env(INPAINT_ADVISOR_DB=str(folder / "registry.db"))
    answer = run_cli("lookup", "majicmix realistic v7", "--offline", env=env)
    assert answer.returncode == 0 and "Use its creator's inpainting release" in answer.stdout, answer.stderr
    assert run_cli("status", env=env).returncode == 0


def test_a_live_lookup_on_a_read_only_registry_answers_without_storing(tmp_path, read_only_dir, serve):
    import datetime
    import random

    from tests.civitai_fake import FakeCivitai, synthetic_item

    folder = read_only_dir(lambda f: (registry.open(str(f / "registry.db")), registry_engine.close_all()))
    url = serve(FakeCivitai([synthetic_item(777002, random.Random(4), datetime.datetime(2025, 1, 1))]))
    answer = lookup("civitai:777002", db=str(folder / "registry.db"), civitai_url=url)
    assert answer.match.model_id == "civitai:777002" and answer.recommendation is not None
    assert any(n.startswith("fetched live and not stored (the registry:") for n in answer.notes), answer.notes


def test_a_reused_postgresql_registry_starts_each_test_as_a_fresh_one():
    """tests/pg.py's reuse: what one test wrote is gone for the next, and a schema a test changed is not reused."""
    import psycopg

    from tests import pg

    def sql(url, statement):
        with psycopg.connect(pg._conninfo(url), autocommit=True) as conn:
            return conn.execute(statement).fetchall() if statement.startswith("SELECT") else conn.execute(statement)

    with pg.reused_registry() as url:
        seeds = sql(url, "SELECT count(*) FROM family")
        sql(url, "INSERT INTO source (id, name, base_url) VALUES ('elsewhere', 'Elsewhere', 'http://x')")
        sql(url, "DELETE FROM family")
    with pg.reused_registry() as again:
        assert again == url  # the same database, emptied back
        assert sql(again, "SELECT count(*) FROM source WHERE id = 'elsewhere'") == [(0,)]
        assert sql(again, "SELECT count(*) FROM family") == seeds
        sql(again, "CREATE TABLE stray (x int)")
    with pg.reused_registry() as fresh:
        assert fresh != url and sql(fresh, "SELECT to_regclass('stray') IS NULL") == [(True,)]


def test_a_registry_opened_to_read_has_its_reads_and_no_way_to_write(empty_db):
    written = registry.open(empty_db)
    view = registry.open(empty_db, "read")
    assert isinstance(view, registry.RegistryView) and not isinstance(view, registry.Registry)
    assert view.status().models == 0 and view.recent_artifacts() == []
    writes = {"transaction", "start_run", "finish_run", "store_page", "record_artifact", "save_official_checks",
              "save_route_checks", "set_hf_families", "link_same_files", "record_civitai_base_models"}  # fmt: skip
    assert {w for w in writes if hasattr(view, w)} == set()
    assert all(callable(getattr(written, w)) for w in writes)


def test_a_list_parameter_expands_and_an_empty_one_is_a_set_of_no_rows(empty_db):
    from crawler.registry.sql import execute

    engine = registry.open(empty_db).engine
    with engine.connect() as conn:
        asked = "SELECT id FROM family WHERE id {} (%(ids)s) ORDER BY id"
        everyone = [r[0] for r in execute(conn, "SELECT id FROM family ORDER BY id")]
        assert [r[0] for r in execute(conn, asked.format("IN"), ids=["sdxl", "sd1"])] == ["sd1", "sdxl"]
        assert execute(conn, asked.format("IN"), ids=[]).all() == []
        assert [r[0] for r in execute(conn, asked.format("NOT IN"), ids=[])] == everyone
        # a value is never SQL, whatever it holds
        odd = "%(ids)s :ids ? %% ' \\"
        assert execute(conn, "SELECT %(v)s, 'a%%b'", v=odd).one() == (odd, "a%b")


def test_timestamps_of_any_year_are_stored_and_read_back():
    from datetime import UTC, datetime

    from crawler.registry.sql import read_time, sqlite_time
    from crawler.timestamps import registry_dt

    early = datetime(999, 6, 1, 12, 0, tzinfo=UTC)
    assert sqlite_time(early) == "0999-06-01 12:00:00.000000" and read_time(sqlite_time(early)) == early
    assert registry_dt("0999-06-01T12:00:00+00:00") == "0999-06-01 12:00:00.000000"
    assert registry_dt("2023-01-01T00:03:00.5+02:00") == "2022-12-31 22:03:00.500000"
