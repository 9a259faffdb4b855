"""`lookup`'s read-only access to the registry, over the plain driver (sqlite3 or psycopg): no SQLAlchemy import
on the hot path, and never a write (SQLite is opened ``mode=ro``, PostgreSQL in read-only transactions).

Free-text search takes candidates from each engine's trigram index (SQLite: FTS5, ``crawler.registry.search``;
PostgreSQL: pg_trgm); ``advisor.advice.match`` ranks them, the same scorer on both: only a few hundred names are ever
scored in Python.
"""

import json
import os
from collections.abc import Iterator
from datetime import datetime
from typing import overload

from crawler.registry import drivers, search
from crawler.registry.errors import NoRegistry
from crawler.registry.location import Location, locate
from crawler.registry.names import normalize_name
from crawler.registry.records import (
    ArtifactRecord,
    LinkRecord,
    ModelRecord,
    OfficialState,
    RouteFileState,
    VersionRecord,
)
from crawler.registry.sql import run as sql_run
from crawler.registry.sql import sqlite_time
from crawler.registry.state import SCHEMA_VERSION, State, read_state

MAX_QUERY = 200  # characters of a normalised query that are matched: no model name is longer


MODEL_COLS = "id, source, source_id, name, creator, base_model, family, is_inpainting, has_inpainting"


def unchanged(path: str, size: int, mtime_ns: int) -> bool:
    """A recorded file is still there, as it was written (size and modification time)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns


@overload
def _text_time(value: datetime | str) -> str: ...
@overload
def _text_time(value: None) -> None: ...
def _text_time(value: datetime | str | None) -> str | None:
    """Timestamps as SQLite stores them; PostgreSQL hands back datetimes."""
    return sqlite_time(value)


class Reader:
    def __init__(self, conn, location: Location, state: State):
        self.conn = conn
        self.location = location
        self.state = state  # an older schema is read as it is: every migration so far only adds
        self.dialect = location.dialect
        self.search_index = search.SqliteNames(self) if self.dialect == "sqlite" else search.PostgresNames(self)

    @property
    def outdated(self) -> bool:
        return self.state.version < SCHEMA_VERSION

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def rows(self, sql: str, **params) -> list[tuple]:
        """``sql`` in the registry's query style (``crawler.registry.sql``), on either driver."""
        return sql_run(self.conn, self.dialect, sql, params)

    def row(self, sql: str, **params) -> tuple | None:
        found = self.rows(sql, **params)
        return found[0] if found else None

    def model_record(self, row: tuple) -> ModelRecord:
        return ModelRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), bool(row[8]))

    def tags(self, model_id: str) -> list[str]:
        """The model's tags as its source lists them (Civitai's "anime", "photorealistic", ...), lower-case."""
        row = self.row("SELECT tags FROM model WHERE id = %(id)s", id=model_id)
        try:
            found = json.loads(row[0]) if row and row[0] else []
        except ValueError:
            return []
        return [t.lower() for t in found if isinstance(t, str)] if isinstance(found, list) else []

    def model(self, model_id: str) -> ModelRecord | None:
        row = self.row(f"SELECT {MODEL_COLS} FROM model WHERE id = %(id)s", id=model_id)
        if row is None and model_id.startswith("hf:"):  # Hub repo ids are case-insensitive
            row = self.row(f"SELECT {MODEL_COLS} FROM model WHERE source = 'hf' AND lower(source_id) = %(repo)s "
                           "LIMIT 1", repo=model_id[3:].lower())  # fmt: skip
        return self.model_record(row) if row else None

    def official_checks(self) -> dict[str, OfficialState]:
        """Mirror repo -> what the last Hugging Face crawl found there."""
        rows = self.rows("SELECT repo, alive, matches, checked_at, detail FROM officialcheck")
        return {r[0]: OfficialState(bool(r[1]), bool(r[2]), _text_time(r[3]), r[4]) for r in rows}

    def route_checks(self) -> dict[tuple[str, str], RouteFileState]:
        """(repo, file) -> what the last Hugging Face crawl found for that route file; empty before the first
        crawl (and on a registry older than migration 6, read-only)."""
        if self.state.version < 6:  # read-only opens do not migrate
            return {}
        rows = self.rows("SELECT repo, file, alive, file_found, size, sha256, matches, checked_at, detail "
                         "FROM routecheck")  # fmt: skip
        return {(r[0], r[1]): RouteFileState(bool(r[2]), bool(r[3]), r[4], r[5], bool(r[6]), _text_time(r[7]), r[8])
                for r in rows}  # fmt: skip

    def same_files(self, model_id: str) -> list[tuple[str, str, str]]:
        """(other model id, its version id, sha256) for each file published on both sources."""
        rows = self.rows(
            "SELECT model_b, version_b, sha256 FROM samefile WHERE model_a = %(id)s UNION "
            "SELECT model_a, version_a, sha256 FROM samefile WHERE model_b = %(id)s",
            id=model_id,
        )
        return [tuple(r) for r in rows]

    def model_of_version(self, version_id: str) -> ModelRecord | None:
        cols = ", ".join("m." + c for c in MODEL_COLS.split(", "))
        row = self.row(f"SELECT {cols} FROM model m JOIN version v ON v.model_id = m.id WHERE v.id = %(id)s",
                       id=version_id)  # fmt: skip
        return self.model_record(row) if row else None

    def versions(self, model_id: str) -> list[VersionRecord]:
        rows = self.rows(
            "SELECT v.id, v.model_id, v.name, v.base_model, v.family, v.published_at, v.position, v.is_inpainting, "
            "v.inpaint_evidence, v.download_url, "
            '(SELECT f.name FROM file f WHERE f.version_id = v.id ORDER BY f."primary" DESC, f.id LIMIT 1), '
            '(SELECT f.sha256 FROM file f WHERE f.version_id = v.id ORDER BY f."primary" DESC, f.id LIMIT 1), '
            '(SELECT f.size_kb FROM file f WHERE f.version_id = v.id ORDER BY f."primary" DESC, f.id LIMIT 1), '
            '(SELECT f.id FROM file f WHERE f.version_id = v.id ORDER BY f."primary" DESC, f.id LIMIT 1) '
            "FROM version v WHERE v.model_id = %(id)s ORDER BY v.position",
            id=model_id,
        )
        return [
            VersionRecord(r[0], r[1], r[2], r[3], r[4], _text_time(r[5]), r[6], bool(r[7]), json.loads(r[8] or "[]"),
                          r[10], r[11], r[9], r[12], r[13])
            for r in rows
        ]  # fmt: skip

    def by_hash(self, value: str, kind: str) -> tuple[str, str] | None:
        """(model id, version id) of the file with this hash."""
        value = value.upper()
        sql = "SELECT v.model_id, v.id FROM file f JOIN version v ON v.id = f.version_id WHERE {} LIMIT 1"
        if kind == "autov2":
            # AutoV2 is the first 10 hex digits of the SHA256: a prefix range on its index. "G" sorts after every
            # hex digit in binary and in linguistic collations alike, so it ends the range on both engines.
            row = self.row(sql.format("f.sha256 >= %(low)s AND f.sha256 < %(high)s"), low=value, high=value + "G")
            if row is None:  # a file Civitai lists with an AutoV2 but no SHA256 (rare): a scan
                row = self.row(sql.format("f.autov2 = %(value)s"), value=value)
        else:
            column = {"sha256": "sha256", "autov1": "autov1", "autov3": "autov3"}[kind]
            row = self.row(sql.format(f"f.{column} = %(value)s"), value=value)
        return (row[0], row[1]) if row else None

    def _links(self, column: str, model_id: str) -> list[LinkRecord]:
        rows = self.rows(
            "SELECT inpaint_version_id, inpaint_model_id, parent_model_id, parent_version_id, kind, confidence, "
            f"evidence FROM inpaintlink WHERE {column} = %(id)s ORDER BY confidence DESC, inpaint_version_id",
            id=model_id,
        )
        return [LinkRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "[]")) for r in rows]

    def links_to(self, model_id: str) -> list[LinkRecord]:
        return self._links("parent_model_id", model_id)

    def links_from(self, inpaint_model_id: str) -> list[LinkRecord]:
        return self._links("inpaint_model_id", inpaint_model_id)

    def artifacts_for(self, model_id: str, version_id: str | None) -> list[ArtifactRecord]:
        """Checkpoints built or fetched here for this model (its version's first), whose files are unchanged."""
        if self.state.version < 4:  # a registry from before builds were recorded
            return []
        rows = self.rows("SELECT kind, path, size, sha256, mtime_ns, version_id, created_at FROM artifact "
                         "WHERE model_id = %(id)s ORDER BY created_at DESC", id=model_id)  # fmt: skip
        found = [ArtifactRecord(r[0], r[1], r[2], r[3], r[5], _text_time(r[6])) for r in rows
                 if unchanged(r[1], r[2], r[4])]  # fmt: skip
        return sorted(found, key=lambda a: a.version_id != version_id)

    def without_inpainting(self, families: list[str], *, min_downloads: int = 0,
                           limit: int = 100) -> list[tuple[ModelRecord, int]]:  # fmt: skip
        """The most downloaded models of ``families`` with no inpainting release, and their download counts."""
        if not families:
            return []
        downloads = "downloads" if self.state.version >= 5 else "0"
        rows = self.rows(f"SELECT {MODEL_COLS}, {downloads} FROM model WHERE family IN (%(families)s) "
                         f"AND NOT has_inpainting AND NOT is_inpainting AND {downloads} >= %(least)s "
                         f"ORDER BY {downloads} DESC, id LIMIT %(limit)s", families=families, least=min_downloads,
                         limit=limit)  # fmt: skip
        return [(self.model_record(r), int(r[9])) for r in rows]

    def built_from(self, b_sha256: str) -> list[ArtifactRecord]:
        """Checkpoints built here from the file with this SHA256 as B (a local file the registry may not know),
        whose outputs are unchanged; newest first."""
        if self.state.version < 4:
            return []
        rows = self.rows("SELECT kind, path, size, sha256, mtime_ns, version_id, created_at FROM artifact "
                         "WHERE kind = 'built' AND upper(b_sha256) = %(sha256)s ORDER BY created_at DESC",
                         sha256=b_sha256.upper())  # fmt: skip
        return [ArtifactRecord(r[0], r[1], r[2], r[3], r[5], _text_time(r[6])) for r in rows
                if unchanged(r[1], r[2], r[4])]  # fmt: skip

    def exact(self, text: str) -> list[ModelRecord]:
        """The models whose normalised name is ``text``'s (re-uploads share names), most downloaded first."""
        cols = MODEL_COLS + (", name_norm, downloads" if self.state.version >= 5 else ", name_norm, 0")
        rows = self.rows(f"SELECT {cols} FROM model WHERE name_norm = %(name)s ORDER BY 11 DESC, id LIMIT 20",
                         name=normalize_name(text)[:MAX_QUERY])  # fmt: skip
        return [self._candidate(r) for r in rows]

    def is_empty(self) -> bool:
        return self.row("SELECT 1 FROM model LIMIT 1") is None

    def name_candidates(self, wanted: str) -> Iterator[list[ModelRecord]]:
        """Batches of models whose names may be what the normalised ``wanted`` means, from the cheapest way to
        the widest (each with ``name_norm`` and ``downloads`` set); the caller scores them and stops when one
        batch holds a good enough name."""
        for rows in self.search_index.candidates(wanted[:MAX_QUERY]):
            yield [self._candidate(r) for r in rows]

    def _candidate(self, row) -> ModelRecord:
        model = self.model_record(row)
        model.name_norm, model.downloads = row[9], row[10] or 0
        return model

    def version_names(self, model_ids: list[str]) -> dict[str, list[tuple[str, str, bool, int]]]:
        """model id -> (version id, name, is_inpainting, position) of each of its versions, in one query."""
        out: dict[str, list] = {m: [] for m in model_ids}
        for i in range(0, len(model_ids), 500):
            chunk = model_ids[i : i + 500]
            rows = self.rows("SELECT model_id, id, name, is_inpainting, position FROM version WHERE model_id IN "
                             "(%(ids)s) ORDER BY model_id, position", ids=chunk)  # fmt: skip
            for r in rows:
                out[r[0]].append((r[1], r[2], bool(r[3]), r[4]))
        return out

    def by_file_name(self, name: str) -> list[tuple[str, str]]:
        """(model id, version id) of the files called ``name`` (case aside), primary files and newer versions
        first; through migration 8's index on lower(name)."""
        rows = self.rows("SELECT v.model_id, v.id FROM file f JOIN version v ON v.id = f.version_id "
                         'WHERE lower(f.name) = %(name)s ORDER BY f."primary" DESC, v.position LIMIT 20',
                         name=name.lower())  # fmt: skip
        return [tuple(r) for r in rows]


def open_reader(db: str | os.PathLike | None = None) -> Reader:
    """Raises NoRegistry where there is none yet, and the other RegistryErrors where it cannot be read."""
    loc = locate(db)
    conn = None
    try:
        if loc.dialect == "sqlite":
            drivers.check_sqlite_path(loc, create=False)
            conn = drivers.open_sqlite(loc.file, read_only=True)
        else:
            conn = drivers.open_postgres(loc, read_only=True)
        state = read_state(lambda sql: sql_run(conn, loc.dialect, sql), loc.dialect, loc.display)
        if state.fresh:
            raise NoRegistry(f"no registry at {loc.display} yet (the database is empty)")
        return Reader(conn, loc, state)
    except Exception as exc:
        if conn is not None:
            conn.close()
        error = drivers.describe(exc, loc)
        if error is None:
            raise
        raise error from None
