"""One registry, opened: ``Registry`` (like sqlite-utils' ``Database``) holds the connection pool and is the way
in for the commands that write, crawl or build, each query a method (``RegistryView``: its reads alone, for
those that only report); ``Transaction`` groups queries that must
land together (a crawl's header proofs, a crawl's links between models), and ``Snapshot`` reads on one
connection.

`lookup`'s fast reader (``reader.Reader``, the plain driver without SQLAlchemy) is the other way in, for
reading alone: ``registry.open(db, "lookup")`` gives it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from crawler.registry import artifacts, engine, lineage, links, officials, pages, proofs, runs, stats
from crawler.registry.location import Location, locate

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from crawler.registry.schema import Artifact, CrawlRun, OfficialCheck, RouteCheck


class RegistryView:
    """The registry at ``location``, opened to read (``open(db, "read")``: `status`, `schedule show`): the
    queries that read, through ``engine`` (SQLAlchemy's pool: shared by every Registry of one database in a
    process). A ``Registry`` adds those that write."""

    def __init__(self, engine_: Engine, location: Location):
        self.engine = engine_  # for the registry's own tests and tools: code elsewhere goes through the methods
        self.location = location

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location.display}>"

    @property
    def where(self) -> str:
        """The registry as messages show it (a path, or a URL without its password)."""
        return self.location.display

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """Queries that read on one connection (a Snapshot has no method that writes)."""
        with self.engine.connect() as conn:
            yield Snapshot(conn)

    def last_successful_run(self, source: str) -> CrawlRun | None:
        return runs.last_successful(self.engine, source)

    def content_hashes(self, ids: list[str]) -> dict[str, str]:
        return pages.content_hashes(self.engine, ids)

    # -- what `status` shows -----------------------------------------------------------------------------------
    def status(self, *, recent_runs: int = 5) -> stats.RegistryStatus:
        return stats.registry_status(self.engine, recent_runs=recent_runs)

    def source_runs(self) -> list[stats.SourceRuns]:
        return stats.source_runs(self.engine)

    def hf_families(self) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, str | None]]:
        return lineage.hf_families(self.engine)

    # -- builds made here --------------------------------------------------------------------------------------
    def artifact_by_key(self, key: str) -> Artifact | None:
        return artifacts.by_key(self.engine, key)

    def recent_artifacts(self, limit: int = 10) -> list[Artifact]:
        return artifacts.recent(self.engine, limit)


class Registry(RegistryView):
    """The registry opened for the commands that write, crawl or build (``open(db)``): a RegistryView's reads,
    and the writes. Methods open and close their own transactions."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Queries that land together or not at all."""
        with self.engine.begin() as conn:
            yield Transaction(conn)

    # -- crawl runs and their lock ---------------------------------------------------------------------------------
    def start_run(self, source: str, mode: str, *, since=None, period: str | None = None) -> runs.Started:
        return runs.start(self.engine, source, mode, since=since, period=period)

    def finish_run(self, run: CrawlRun, status: str, error: str | None = None,
                   summary: runs.RunSummary | None = None) -> None:  # fmt: skip
        runs.finish(self.engine, run, status, error, summary)

    def record_run_failure(self, run: CrawlRun, summary: runs.RunSummary, exc: BaseException) -> None:
        runs.record_failure(self.engine, run, summary, exc)

    # -- crawled pages, links, lineage and checks --------------------------------------------------------------
    def store_page(self, parsed: dict[str, pages.ParsedModel], run_id: int | None,
                   next_cursor: str | None) -> pages.PageResult:  # fmt: skip
        return pages.store_parsed(self.engine, parsed, run_id, next_cursor)

    def record_civitai_base_models(self, names: list[str]) -> None:
        stats.record_civitai_base_models(self.engine, names)

    def link_same_files(self, hf_model: str | None = None) -> int:
        return links.link_same_files(self.engine, hf_model)

    def set_hf_families(self, changed: dict[str, str]) -> None:
        lineage.set_families(self.engine, changed)

    def save_official_checks(self, checks: list[OfficialCheck]) -> None:
        officials.save_checks(self.engine, checks)

    def save_route_checks(self, checks: list[RouteCheck]) -> None:
        officials.save_route_checks(self.engine, checks)

    # -- builds made here --------------------------------------------------------------------------------------
    def record_artifact(self, made: artifacts.Made) -> None:
        artifacts.record(self.engine, made)


class Snapshot:
    """Queries that read, on one connection (``Registry.snapshot``; a Transaction reads the same way)."""

    def __init__(self, conn: Connection):
        self._conn = conn

    # -- links between models ----------------------------------------------------------------------------------
    def dedicated_models(self):
        return links.dedicated_models(self._conn)

    def sibling_link_ids(self) -> set[str]:
        return links.sibling_link_ids(self._conn)

    def creator_models(self, source: str, creator: str):
        return links.creator_models(self._conn, source, creator)

    def versions_of(self, model_ids: list[str]) -> list[dict]:
        return links.versions_of(self._conn, model_ids)

    # -- header proofs of Civitai versions ---------------------------------------------------------------------
    def known_proofs(self, keys: list[str]) -> dict[str, dict]:
        return proofs.known(self._conn, keys)

    def pending_proofs(self, limit: int, offset: int = 0,
                       contradictions: Sequence[tuple[str, Sequence[str]]] = ()) -> list[dict]:  # fmt: skip
        return proofs.pending(self._conn, limit, offset, contradictions)

    def versions_for_links(self, model_id: str) -> list[dict]:
        return proofs.versions_for_links(self._conn, model_id)


class Transaction(Snapshot):
    """Queries that land together or not at all (``Registry.transaction``): a Snapshot's reads, and writes."""

    def save_sibling_links(self, rows: list[dict], parents: set[str]) -> None:
        links.save_sibling_links(self._conn, rows, parents)

    def save_proofs(self, rows: list[dict]) -> None:
        proofs.save(self._conn, rows)

    def set_verdicts(self, verdicts: dict[str, tuple[bool, float, list[str]]]) -> set[str]:
        return proofs.set_verdicts(self._conn, verdicts)

    def set_proven_families(self, families: dict[str, str]) -> None:
        proofs.set_families(self._conn, families)

    def refresh_model(self, model_id: str, versions: list[dict], same_model_links: list[dict]) -> None:
        proofs.refresh_model(self._conn, model_id, versions, same_model_links)


def open_registry(db: str | os.PathLike | None = None) -> Registry:
    """The registry ``db`` (a path, an URL, or None for the configured one) for writing: created where missing,
    upgraded where old."""
    return Registry(engine.connect(db), locate(db))


def open_view(db: str | os.PathLike | None = None) -> RegistryView:
    """The registry ``db`` to read: never created, never altered."""
    return RegistryView(engine.connect_read_only(db), locate(db))
