"""The registry: the one owner of its schema, migrations and every query, on SQLite (embedded, the default)
or PostgreSQL (a team's shared registry).

- ``connect(db)``: an SQLAlchemy engine for commands that write (created where missing, upgraded where old);
- ``connect_read_only(db)``: for commands that only read (never created, never altered);
- ``open_reader(db)``: `lookup`'s fast reader over the plain driver (no SQLAlchemy import); ``open_reader_if_any``
  gives None where there is no registry yet;
- the modules beside this one hold the queries: ``pages`` (a crawl page), ``runs`` (crawl runs and locks),
  ``links``, ``lineage``, ``officials``, ``stats`` (what `status` shows), ``reader``.

``db`` is a path, an URL (``postgresql+psycopg://...``) or None for ``$INPAINT_ADVISOR_DB`` / the default.
Every failure to open is a ``RegistryError`` (``crawler.registry.errors``) that says what is wrong.

Importing this package is cheap: SQLAlchemy and the drivers load with the function that needs them.
"""

from typing import TYPE_CHECKING

from crawler.registry.errors import (
    MissingDriver,
    NewerRegistry,
    NoRegistry,
    NotARegistry,
    ReadOnlyRegistry,
    RegistryError,
    RegistryUnreachable,
    UnsupportedRegistry,
)
from crawler.registry.location import Location, default_db_path, locate
from crawler.registry.names import normalize_name
from crawler.registry.records import (
    ArtifactRecord,
    LinkRecord,
    ModelRecord,
    OfficialState,
    RouteFileState,
    VersionRecord,
)

if TYPE_CHECKING:  # what the names below are, for type checkers
    from crawler.registry.artifacts import Made
    from crawler.registry.artifacts import by_key as artifact_by_key
    from crawler.registry.artifacts import record as record_artifact
    from crawler.registry.engine import forget
    from crawler.registry.lineage import hf_families
    from crawler.registry.lineage import set_families as set_hf_families
    from crawler.registry.links import (
        creator_models,
        dedicated_models,
        link_same_files,
        save_sibling_links,
        sibling_link_ids,
        versions_of,
    )
    from crawler.registry.officials import save_checks as save_official_checks
    from crawler.registry.officials import save_route_checks
    from crawler.registry.pages import PageResult, ParsedModel, content_hashes
    from crawler.registry.pages import store_parsed as store_page
    from crawler.registry.proofs import (
        key_of as proof_key,
    )
    from crawler.registry.proofs import (
        known as known_proofs,
    )
    from crawler.registry.proofs import (
        pending as pending_proofs,
    )
    from crawler.registry.proofs import (
        refresh_model,
        set_verdicts,
        versions_for_links,
    )
    from crawler.registry.proofs import (
        save as save_proofs,
    )
    from crawler.registry.proofs import (
        set_families as set_proven_families,
    )
    from crawler.registry.queue import (
        ATTEMPTS as JOB_ATTEMPTS,
    )
    from crawler.registry.queue import (
        JobFailed,
        JobNews,
        JobRecord,
        TeamModeNeedsPostgres,
        cron_for,
        enqueue_builds,
        list_jobs,
        run_worker,
    )
    from crawler.registry.queue import (
        cancel as cancel_job,
    )
    from crawler.registry.queue import (
        require as require_team,
    )
    from crawler.registry.queue import (
        retry as retry_job,
    )
    from crawler.registry.queue import (
        show as show_job,
    )
    from crawler.registry.reader import Reader
    from crawler.registry.runs import (
        CrawlLocked,
        RunSummary,
        stopped_note,
        utcnow,
    )
    from crawler.registry.runs import (
        finish as finish_run,
    )
    from crawler.registry.runs import (
        last_successful as last_successful_run,
    )
    from crawler.registry.runs import (
        record_failure as record_run_failure,
    )
    from crawler.registry.runs import (
        start as start_run,
    )
    from crawler.registry.schema import OfficialCheck, RouteCheck
    from crawler.registry.stats import RegistryStatus, record_civitai_base_models, registry_status, source_runs

__all__ = [
    "MissingDriver", "NewerRegistry", "NoRegistry", "NotARegistry", "ReadOnlyRegistry", "RegistryError",
    "RegistryUnreachable", "UnsupportedRegistry", "Location", "default_db_path", "locate", "normalize_name",
    "ArtifactRecord", "LinkRecord", "ModelRecord", "OfficialState", "RouteFileState", "VersionRecord",
    "connect", "connect_read_only", "open_reader", "open_reader_if_any", "describe_error", "Reader",
    "CrawlLocked", "RunSummary", "start_run", "finish_run", "record_run_failure", "last_successful_run",
    "stopped_note", "utcnow", "ParsedModel", "PageResult", "store_page", "content_hashes", "RegistryStatus",
    "registry_status", "source_runs", "record_civitai_base_models", "link_same_files", "dedicated_models",
    "sibling_link_ids", "creator_models", "versions_of", "save_sibling_links", "hf_families",
    "set_hf_families", "OfficialCheck", "RouteCheck", "save_official_checks", "save_route_checks", "Made",
    "record_artifact", "artifact_by_key", "proof_key", "known_proofs", "pending_proofs", "save_proofs",
    "set_verdicts", "set_proven_families", "versions_for_links", "refresh_model", "JobFailed", "JobNews",
    "JobRecord", "TeamModeNeedsPostgres", "JOB_ATTEMPTS", "require_team", "enqueue_builds", "list_jobs",
    "show_job", "retry_job", "cancel_job", "run_worker", "cron_for", "forget",
]  # fmt: skip

# The rest of the way in, each name from its module on first use (importing the package stays cheap: SQLAlchemy
# and the drivers load with what needs them). Code outside the registry imports these from here, never a module
# of the registry (tests/test_architecture.py). Public name -> "module:name there".
_HOME = {
    "Reader": "reader:Reader",
    # crawl runs and their lock
    "CrawlLocked": "runs:CrawlLocked", "RunSummary": "runs:RunSummary", "start_run": "runs:start",
    "finish_run": "runs:finish", "record_run_failure": "runs:record_failure",
    "last_successful_run": "runs:last_successful", "stopped_note": "runs:stopped_note", "utcnow": "runs:utcnow",
    # a crawled page
    "ParsedModel": "pages:ParsedModel", "PageResult": "pages:PageResult", "store_page": "pages:store_parsed",
    "content_hashes": "pages:content_hashes",
    # what `status` shows
    "RegistryStatus": "stats:RegistryStatus", "registry_status": "stats:registry_status",
    "source_runs": "stats:source_runs", "record_civitai_base_models": "stats:record_civitai_base_models",
    # links between models
    "link_same_files": "links:link_same_files", "dedicated_models": "links:dedicated_models",
    "sibling_link_ids": "links:sibling_link_ids", "creator_models": "links:creator_models",
    "versions_of": "links:versions_of", "save_sibling_links": "links:save_sibling_links",
    # Hub lineage and checks of official files and route files
    "hf_families": "lineage:hf_families", "set_hf_families": "lineage:set_families",
    "OfficialCheck": "schema:OfficialCheck", "RouteCheck": "schema:RouteCheck",
    "save_official_checks": "officials:save_checks", "save_route_checks": "officials:save_route_checks",
    # builds made here
    "Made": "artifacts:Made", "record_artifact": "artifacts:record", "artifact_by_key": "artifacts:by_key",
    # header proofs of Civitai versions
    "proof_key": "proofs:key_of", "known_proofs": "proofs:known", "pending_proofs": "proofs:pending",
    "save_proofs": "proofs:save", "set_verdicts": "proofs:set_verdicts", "set_proven_families": "proofs:set_families",
    "versions_for_links": "proofs:versions_for_links", "refresh_model": "proofs:refresh_model",
    # the team's job queue
    "JobFailed": "queue:JobFailed", "JobNews": "queue:JobNews", "JobRecord": "queue:JobRecord",
    "TeamModeNeedsPostgres": "queue:TeamModeNeedsPostgres", "JOB_ATTEMPTS": "queue:ATTEMPTS",
    "require_team": "queue:require", "enqueue_builds": "queue:enqueue_builds", "list_jobs": "queue:list_jobs",
    "show_job": "queue:show", "retry_job": "queue:retry", "cancel_job": "queue:cancel",
    "run_worker": "queue:run_worker", "cron_for": "queue:cron_for",
    # an engine forgotten (a scratch registry removed)
    "forget": "engine:forget",
}  # fmt: skip


def __getattr__(name: str):
    import importlib

    if name not in _HOME:
        raise AttributeError(f"module 'crawler.registry' has no attribute {name!r}")
    module, attr = _HOME[name].split(":")
    return getattr(importlib.import_module(f"crawler.registry.{module}"), attr)


def connect(db=None):
    from crawler.registry.engine import connect

    return connect(db)


def connect_read_only(db=None):
    from crawler.registry.engine import connect_read_only

    return connect_read_only(db)


def open_reader(db=None):
    from crawler.registry.reader import open_reader

    return open_reader(db)


def open_reader_if_any(db=None):
    """``open_reader(db)``, or None where there is no registry yet (the callers that answer without one)."""
    try:
        return open_reader(db)
    except NoRegistry:
        return None


def describe_error(exc: BaseException, db=None) -> RegistryError | None:
    """A database error raised while using the registry, as one line about it (None: not a database error)."""
    if isinstance(exc, RegistryError):
        return exc
    from crawler.registry.engine import describe_error

    return describe_error(exc, locate(db))
