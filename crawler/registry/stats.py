"""What the registry holds: counts per family, inpainting coverage, unknown base models, recent crawls."""

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from crawler.registry.engine import where
from crawler.registry.reader import unchanged
from crawler.registry.runs import ErrorNote
from crawler.registry.schema import CRAWL_RUN, META, OFFICIAL_CHECK, Artifact, CrawlRun, as_record, typed
from crawler.registry.sql import columns, execute, read_time, tables
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
    m = typed(CRAWL_RUN, r)
    try:
        notes = [ErrorNote(**n) for n in json.loads(m.get("first_errors") or "[]")]
    except (ValueError, TypeError):
        notes = []
    return RunInfo(m["id"], m["source"], m["mode"], m["status"], m["started_at"], m["finished_at"], m["pages"],
                   m["items"], m["errors"], m["cursor"], m["last_error"], notes, m.get("headers_read", 0),
                   m.get("headers_unreadable", 0), m.get("headers_deferred", 0))  # fmt: skip


def run_columns(conn: Connection) -> str:
    """The ``crawlrun`` columns this registry has, for a SELECT: `status` reads an older one as it is."""
    have = columns(conn, "crawlrun")
    return ", ".join(name for name in CrawlRun.model_fields if name in have)


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
        count = lambda table: execute(conn, f"SELECT count(*) FROM {table}").scalar_one()  # noqa: E731
        status = RegistryStatus(
            db=where(engine),
            models=count("model"),
            versions=count("version"),
            files=count("file"),
            inpainting_versions=execute(conn, "SELECT count(*) FROM version WHERE is_inpainting").scalar_one(),
            links=count("inpaintlink"),
            same_files=count("samefile"),
        )
        status.per_source = dict(execute(conn, "SELECT source, count(*) FROM model GROUP BY source").all())
        for r in execute(conn, "SELECT * FROM officialcheck ORDER BY id"):
            c = typed(OFFICIAL_CHECK, r)
            status.officials.append(OfficialInfo(c["family"], c["role"], c["repo"], c["file"], c["alive"],
                                                 c["matches"], c["detail"], c["checked_at"]))  # fmt: skip
        per_family = execute(conn, "SELECT family, count(*), sum(CASE WHEN has_inpainting THEN 1 ELSE 0 END) "
                             "FROM model WHERE NOT is_inpainting GROUP BY family").all()  # fmt: skip
        names = {f.id: f for f in execute(conn, "SELECT * FROM family").all()}
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
        status.families.sort(key=lambda f: (-f.models, f.family))  # ties in one order on both engines
        popular = "downloads" in columns(conn, "model")  # an old registry lacks it
        for bm, n in execute(conn, "SELECT base_model, count(*) FROM version WHERE family IS NULL AND base_model IS "
                             "NOT NULL GROUP BY base_model ORDER BY count(*) DESC").all():  # fmt: skip
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
        listed = run_columns(conn)
        recent = execute(conn, f"SELECT {listed} FROM crawlrun ORDER BY id DESC LIMIT %(n)s", n=recent_runs)
        status.runs.extend(_run_info(r) for r in recent)
        newest = execute(conn, f"SELECT {listed} FROM crawlrun WHERE id IN (SELECT max(id) FROM crawlrun "
                         "GROUP BY source) ORDER BY source")  # fmt: skip
        status.last_runs.extend(_run_info(r) for r in newest)
    present = status_tables(engine)
    if "meta" in present:
        with engine.connect() as conn:
            listed = execute(conn, "SELECT value FROM meta WHERE key = %(key)s", key=CIVITAI_BASE_MODELS).scalar()
        status.civitai_lists_unknown = [bm for bm in json.loads(listed or "[]")
                                        if base_models.civitai_base_model(bm) is None]  # fmt: skip
    if "artifact" in present:
        with engine.connect() as conn:
            made = execute(conn, "SELECT * FROM artifact ORDER BY created_at DESC LIMIT %(n)s", n=recent_runs * 2)
            for a in (as_record(Artifact, r) for r in made):
                status.builds.append(BuildInfo(a.kind, a.model_id, a.path, a.size,
                                               unchanged(a.path, a.size, a.mtime_ns), a.created_at, a.version_id,
                                               a.b_sha256, a.sha256))  # fmt: skip
    return status


def _examples(conn: Connection, base_model: str, popular: bool) -> list[str]:
    """A few models of this base model, the most downloaded first where the registry counts downloads."""
    order = "downloads DESC, id" if popular else "id"
    sql = ("SELECT name FROM model WHERE id IN (SELECT model_id FROM version WHERE base_model = %(base)s AND "
           f"family IS NULL) ORDER BY {order} LIMIT 3")  # fmt: skip
    return list(execute(conn, sql, base=base_model).scalars())


def status_tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return tables(conn)


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
        models: dict[str, int] = dict(execute(conn, "SELECT source, count(*) FROM model GROUP BY source").all())
        ok: dict[str, datetime | None] = {
            source: read_time(finished) for source, finished in execute(
                conn, "SELECT source, max(finished_at) FROM crawlrun WHERE status = 'ok' GROUP BY source")
        }  # fmt: skip
        newest: dict[str, dict] = {}
        for r in execute(conn, f"SELECT {run_columns(conn)} FROM crawlrun ORDER BY id DESC"):
            newest.setdefault(r.source, typed(CRAWL_RUN, r))
        out = []
        for (sid,) in execute(conn, "SELECT id FROM source ORDER BY id").all():
            last = newest.get(sid)
            out.append(SourceRuns(sid, int(models.get(sid, 0)), ok.get(sid),
                                  last["status"] if last else None, last["last_error"] if last else None,
                                  last["started_at"] if last else None))  # fmt: skip
        return out
