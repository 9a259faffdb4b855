"""What the registry holds: counts per family, inpainting coverage, unknown base models, recent crawls."""

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import case, func, inspect, select
from sqlalchemy.engine import Connection, Engine, Row

from crawler.registry.engine import where
from crawler.registry.reader import unchanged
from crawler.registry.runs import ErrorNote
from crawler.registry.schema import (
    ARTIFACT,
    CRAWL_RUN,
    FAMILY,
    FILE,
    INPAINT_LINK,
    META,
    MODEL,
    OFFICIAL_CHECK,
    SAME_FILE,
    SOURCE,
    VERSION,
)
from data import base_models


@dataclass
class FamilyCount:
    family: str
    name: str
    models: int
    with_inpainting: int
    official_inpaint: bool

    @property
    def coverage(self) -> float:
        return self.with_inpainting / self.models if self.models else 0.0


@dataclass
class RunInfo:
    id: int
    source: str
    mode: str
    status: str  # running | ok | stopped (--max-pages: resumable) | failed | interrupted
    started_at: datetime
    finished_at: datetime | None
    pages: int
    items: int
    errors: int  # every error the run met
    cursor: str | None
    last_error: str | None
    first_errors: list[ErrorNote] = field(default_factory=list)  # the first 50 errors, with URL and reason
    headers_read: int = 0  # Civitai: files whose header proof was recorded (the unreadable ones included)
    headers_unreadable: int = 0  # Civitai: of those, not a checkpoint, malformed, or gone (404, 410)
    headers_deferred: int = 0  # Civitai: files not read (401/403, 429, 5xx, a dropped connection): asked again


def _run_info(r) -> RunInfo:
    """A ``crawlrun`` row as read by ``run_columns`` (an older registry lacks the newer columns)."""
    m = r._mapping
    try:
        notes = [ErrorNote(**n) for n in json.loads(m.get("first_errors") or "[]")]
    except (ValueError, TypeError):
        notes = []
    return RunInfo(r.id, r.source, r.mode, r.status, r.started_at, r.finished_at, r.pages, r.items, r.errors,
                   r.cursor, r.last_error, notes, m.get("headers_read", 0), m.get("headers_unreadable", 0),
                   m.get("headers_deferred", 0))  # fmt: skip


def run_columns(conn: Connection) -> list:
    """The ``crawlrun`` columns this registry has: `status` reads an older one as it is."""
    from sqlalchemy import inspect

    have = {c["name"] for c in inspect(conn).get_columns("crawlrun")}
    return [c for c in CRAWL_RUN.c if c.name in have]


@dataclass
class OfficialInfo:
    family: str
    role: str  # inpaint | base
    repo: str
    file: str | None
    alive: bool
    matches: bool
    detail: str
    checked_at: datetime


@dataclass
class BuildInfo:
    kind: str  # built | downloaded-release
    model_id: str | None
    path: str
    size: int
    present: bool  # still there, unchanged
    created_at: datetime
    version_id: str | None = None  # the version built from (a build answers lookup for this version only)
    b_sha256: str | None = None  # B's SHA256: the fine-tune file it was built from
    sha256: str | None = None  # the output's


@dataclass
class RegistryStatus:
    db: str
    models: int
    versions: int
    files: int
    inpainting_versions: int
    links: int
    same_files: int = 0  # Civitai and Hugging Face files with the same SHA256
    per_source: dict[str, int] = field(default_factory=dict)
    officials: list[OfficialInfo] = field(default_factory=list)  # empty until a Hugging Face crawl ran
    families: list[FamilyCount] = field(default_factory=list)
    # base models of no family: image ones (or not in Civitai's list) are what the bundled data does not cover
    # yet; the rest are not image checkpoints (video, audio, 3D), stored and answered as such
    unknown_base_models: list[tuple[str, int]] = field(default_factory=list)
    # (base model, media or "api-only", versions)
    not_image_base_models: list[tuple[str, str, int]] = field(default_factory=list)
    unknown_examples: dict[str, list[str]] = field(default_factory=dict)  # base model -> its most downloaded models
    # base models Civitai's /api/v1/enums listed at the last crawl that this release's copy of its list lacks
    civitai_lists_unknown: list[str] = field(default_factory=list)
    runs: list[RunInfo] = field(default_factory=list)  # the most recent crawls, newest first
    last_runs: list[RunInfo] = field(default_factory=list)  # the newest crawl of each source, with its errors
    builds: list[BuildInfo] = field(default_factory=list)  # what `build` made or fetched here, newest first


CIVITAI_BASE_MODELS = "civitai_base_models"  # meta key: Civitai's list of base models as its API gave it last


def record_civitai_base_models(engine: Engine, names: list[str]) -> None:
    """Civitai's list of base models as `crawl civitai` read it (/api/v1/enums): status compares it with the
    copy this release carries."""
    from crawler.registry.upsert import upsert

    with engine.begin() as conn:
        upsert(conn, META, [{"key": CIVITAI_BASE_MODELS, "value": json.dumps(names)}])


def registry_status(engine: Engine, *, recent_runs: int = 5) -> RegistryStatus:
    with engine.connect() as conn:
        count = lambda table: conn.execute(select(func.count()).select_from(table)).scalar_one()  # noqa: E731
        status = RegistryStatus(
            db=where(engine),
            models=count(MODEL),
            versions=count(VERSION),
            files=count(FILE),
            inpainting_versions=conn.execute(
                select(func.count()).select_from(VERSION).where(VERSION.c.is_inpainting.is_(True))
            ).scalar_one(),
            links=count(INPAINT_LINK),
            same_files=count(SAME_FILE),
        )
        status.per_source = dict(
            conn.execute(select(MODEL.c.source, func.count()).group_by(MODEL.c.source)).all()
        )
        status.officials = [
            OfficialInfo(r.family, r.role, r.repo, r.file, r.alive, r.matches, r.detail, r.checked_at)
            for r in conn.execute(select(OFFICIAL_CHECK).order_by(OFFICIAL_CHECK.c.id)).all()
        ]
        per_family = conn.execute(
            select(
                MODEL.c.family,
                func.count(),
                func.sum(
                    case((MODEL.c.has_inpainting.is_(True) & MODEL.c.is_inpainting.is_(False), 1), else_=0)
                ),
            )
            .where(MODEL.c.is_inpainting.is_(False))
            .group_by(MODEL.c.family)
        ).all()
        names = {f.id: f for f in conn.execute(select(FAMILY)).all()}
        for fam, n, covered in per_family:
            info = names.get(fam)
            status.families.append(
                FamilyCount(
                    fam or "unknown",
                    info.name if info else "unknown base model",
                    n,
                    int(covered or 0),
                    bool(info and info.has_official_inpaint),
                )
            )
        status.families.sort(key=lambda f: -f.models)
        popular = "downloads" in {c["name"] for c in inspect(conn).get_columns("model")}  # an old registry lacks it
        for bm, n in conn.execute(
            select(VERSION.c.base_model, func.count())
            .where(VERSION.c.family.is_(None), VERSION.c.base_model.is_not(None))
            .group_by(VERSION.c.base_model)
            .order_by(func.count().desc())
        ).all():
            if bm is None:  # as the query asks
                continue
            if base_models.api_only(bm):  # answered as such: no weights, no gap of the tool
                status.not_image_base_models.append((bm, "api-only", n))
            elif base_models.not_an_image_model(bm):
                status.not_image_base_models.append((bm, "no model", n))
            elif base_models.is_image(bm):
                status.unknown_base_models.append((bm, n))
                status.unknown_examples[bm] = _examples(conn, bm, popular)
            else:
                media = (base_models.civitai_base_model(bm) or {}).get("media", "other")
                status.not_image_base_models.append((bm, media, n))
        columns = run_columns(conn)
        for r in conn.execute(select(*columns).order_by(CRAWL_RUN.c.id.desc()).limit(recent_runs)).all():
            status.runs.append(_run_info(r))
        newest = select(func.max(CRAWL_RUN.c.id)).group_by(CRAWL_RUN.c.source).scalar_subquery()
        for r in conn.execute(select(*columns).where(CRAWL_RUN.c.id.in_(newest)).order_by(CRAWL_RUN.c.source)):
            status.last_runs.append(_run_info(r))
    tables = status_tables(engine)
    if "meta" in tables:
        with engine.connect() as conn:
            listed = conn.execute(select(META.c.value).where(META.c.key == CIVITAI_BASE_MODELS)).scalar()
        status.civitai_lists_unknown = [bm for bm in json.loads(listed or "[]")
                                        if base_models.civitai_base_model(bm) is None]  # fmt: skip
    if "artifact" in tables:
        with engine.connect() as conn:
            for a in conn.execute(select(ARTIFACT).order_by(ARTIFACT.c.created_at.desc()).limit(recent_runs * 2)):
                status.builds.append(BuildInfo(a.kind, a.model_id, a.path, a.size,
                                               unchanged(a.path, a.size, a.mtime_ns), a.created_at, a.version_id,
                                               a.b_sha256, a.sha256))  # fmt: skip
    return status


def _examples(conn: Connection, base_model: str, popular: bool) -> list[str]:
    """A few models of this base model, the most downloaded first where the registry counts downloads."""
    order = (MODEL.c.downloads.desc(), MODEL.c.id) if popular else (MODEL.c.id,)
    return list(conn.execute(
        select(MODEL.c.name).where(MODEL.c.id.in_(
            select(VERSION.c.model_id).where(VERSION.c.base_model == base_model, VERSION.c.family.is_(None))))
        .order_by(*order).limit(3)).scalars())  # fmt: skip


def status_tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


@dataclass
class SourceRuns:
    source: str
    models: int
    last_success: datetime | None  # when the newest successful crawl finished
    last_status: str | None  # of the newest crawl: ok | failed | interrupted | running
    last_error: str | None
    last_started: datetime | None


def source_runs(engine: Engine) -> list[SourceRuns]:
    """Per source of the registry: its newest crawl and newest successful one (what a health check needs)."""

    with engine.connect() as conn:
        models: dict[str, int] = dict(
            conn.execute(select(MODEL.c.source, func.count()).group_by(MODEL.c.source)).all()
        )
        ok: dict[str, datetime | None] = dict(
            conn.execute(select(CRAWL_RUN.c.source, func.max(CRAWL_RUN.c.finished_at))
                         .where(CRAWL_RUN.c.status == "ok").group_by(CRAWL_RUN.c.source)).all()
        )  # fmt: skip
        newest: dict[str, Row] = {}
        for r in conn.execute(select(*run_columns(conn)).order_by(CRAWL_RUN.c.id.desc())).all():
            newest.setdefault(r.source, r)
        out = []
        for (sid,) in conn.execute(select(SOURCE.c.id).order_by(SOURCE.c.id)).all():
            last = newest.get(sid)
            out.append(SourceRuns(sid, int(models.get(sid, 0)), _aware(ok.get(sid)), last.status if last else None,
                                  last.last_error if last else None, _aware(last.started_at) if last else None))
        return out


def _aware(when: datetime | None) -> datetime | None:
    """Times are stored in UTC; SQLite gives them back without a zone."""
    from datetime import UTC

    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when
