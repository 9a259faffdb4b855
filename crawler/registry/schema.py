"""Registry tables, as the newest migration leaves them (``crawler.registry.migrations`` gets older
registries there; a test holds a fresh registry and an upgraded one to the same schema).

Secondary indexes exist only where a query needs them (ids, names, creators, hashes, links): each one costs
every crawled row a B-tree insert, and `status`'s group-bys scan happily without them.

Primary keys are namespaced strings (``civitai:123``, ``civitai:v456``, ``hf:author/repo``) so that a page of
records can be upserted in bulk without reading back generated ids, and so that the schema stays portable to
PostgreSQL (no SQLite-only types; JSON is stored as text).
"""

from datetime import datetime
from functools import cache
from typing import TypeVar, cast

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Table, text
from sqlmodel import Field, SQLModel

from crawler.registry.sql import read_time


def table_of(model: type[SQLModel]) -> Table:
    """``model.__table__``, the Core table of a ``table=True`` model: SQLModel sets it on every table model, but
    its typing does not declare it."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]  # set at runtime, not in SQLModel's stubs


class Source(SQLModel, table=True):
    id: str = Field(primary_key=True)  # "civitai", "hf"
    name: str
    base_url: str


class Family(SQLModel, table=True):
    id: str = Field(primary_key=True)  # "sd1", "sdxl", ... as in data/families.json
    name: str
    parent: str | None = None
    architecture: str
    has_official_inpaint: bool = False


class Model(SQLModel, table=True):
    # "juggernautxl" finds "Juggernaut XL": names without their spaces (a trigram index cannot see across them)
    __table_args__ = (Index("ix_model_name_compact", text("replace(name_norm, ' ', '')")),)

    id: str = Field(primary_key=True)
    source: str = Field(foreign_key="source.id")
    source_id: str
    name: str
    name_norm: str = Field(index=True)
    type: str | None = None
    creator: str | None = Field(default=None, index=True)
    tags: str = "[]"  # JSON list
    nsfw: bool = False
    mode: str | None = None  # "Archived" / "TakenDown" when set
    base_model: str | None = None  # base model of the newest version, as the source wrote it
    family: str | None = None
    is_inpainting: bool = False  # every version is an inpainting release (a dedicated inpainting model)
    has_inpainting: bool = False  # at least one version or linked model is an inpainting release
    updated_at: datetime | None = None  # newest version change seen at the source
    content_hash: str = ""  # hash of the parsed record: unchanged records are not rewritten
    # the source's download count when the record was last written (not in content_hash: counts move daily)
    downloads: int = Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"})


class Version(SQLModel, table=True):
    id: str = Field(primary_key=True)
    model_id: str = Field(foreign_key="model.id", index=True)
    source_id: str
    name: str
    base_model: str | None = None
    base_model_type: str | None = None
    family: str | None = None
    published_at: datetime | None = None
    updated_at: datetime | None = None
    position: int = 0  # 0 = newest, as the source orders versions
    is_inpainting: bool = False
    inpaint_confidence: float = 0.0
    inpaint_evidence: str = "[]"  # JSON list of human-readable reasons
    download_url: str | None = None


class File(SQLModel, table=True):
    # lookup by a file's name as users have it on disk ("dreamshaper_8.safetensors"), case aside
    __table_args__ = (Index("ix_file_name_lower", text("lower(name)")),)

    id: str = Field(primary_key=True)
    version_id: str = Field(foreign_key="version.id", index=True)
    name: str
    size_kb: float | None = None
    type: str | None = None
    format: str | None = None
    fp: str | None = None
    primary: bool = False
    sha256: str | None = Field(default=None, index=True)  # upper-case hex
    autov1: str | None = Field(default=None, index=True)
    autov2: str | None = None  # = sha256[:10]: found through the sha256 index (one random-key index less per file
    # made crawl writes 25% faster)
    autov3: str | None = Field(default=None, index=True)
    crc32: str | None = None
    blake3: str | None = None
    download_url: str | None = None


class InpaintLink(SQLModel, table=True):
    """``inpaint_version_id`` is the inpainting release of ``parent_model_id`` (and of ``parent_version_id``
    when a matching version is known)."""

    id: str = Field(primary_key=True)  # "<inpaint_version_id>><parent_model_id>"
    inpaint_version_id: str = Field(foreign_key="version.id", index=True)
    inpaint_model_id: str = Field(foreign_key="model.id", index=True)
    parent_model_id: str = Field(foreign_key="model.id", index=True)
    parent_version_id: str | None = Field(default=None, foreign_key="version.id")
    kind: str  # "same-model" (a version of the same model) or "sibling-model" (a separate model)
    confidence: float
    evidence: str = "[]"


class SameFile(SQLModel, table=True):
    """The same checkpoint published on two sources (equal SHA256): what one source knows applies to the other."""

    id: str = Field(primary_key=True)  # "<file a>=<file b>", a from the source that sorts first
    sha256: str = Field(index=True)
    model_a: str = Field(foreign_key="model.id", index=True)
    model_b: str = Field(foreign_key="model.id", index=True)
    version_a: str = Field(foreign_key="version.id")
    version_b: str = Field(foreign_key="version.id")


class OfficialCheck(SQLModel, table=True):
    """What the last Hugging Face crawl found for each official checkpoint mirror in data/families.json."""

    id: str = Field(primary_key=True)  # "<family>:<role>:<repo>"
    family: str = Field(foreign_key="family.id")
    role: str  # "inpaint" | "base"
    repo: str
    file: str | None = None
    alive: bool = False  # the repo answers
    file_found: bool = False
    size: int | None = Field(default=None, sa_type=BigInteger)  # as the Hub reports it: 4 GB files exist
    sha256: str | None = None  # the Hub's lfs.sha256, lower-case hex
    matches: bool = False  # file present with the size and sha256 data/ expects
    detail: str = ""
    checked_at: datetime


class JobRun(SQLModel, table=True):
    """The last run of each team-mode build job: which worker took it and how it last failed (procrastinate,
    the queue, keeps neither a worker's name nor an error)."""

    job_id: int = Field(primary_key=True, sa_type=BigInteger)
    worker: str  # host:pid
    attempt: int = 0
    error: str | None = None
    at: datetime


class RouteCheck(SQLModel, table=True):
    """What the last Hugging Face crawl found for each Hub file of an inpainting route in data/routes.json."""

    id: str = Field(primary_key=True)  # "<route>:<repo>/<file>"
    route: str
    repo: str
    file: str
    alive: bool = False
    file_found: bool = False
    size: int | None = Field(default=None, sa_type=BigInteger)
    sha256: str | None = None
    matches: bool = False
    detail: str = ""
    checked_at: datetime


class CrawlRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(foreign_key="source.id", index=True)
    mode: str  # "full" | "incremental"
    status: str = Field(index=True)  # "running" | "ok" | "stopped" (--max-pages) | "failed" | "interrupted"
    started_at: datetime
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    host: str = ""
    pid: int = 0
    since: datetime | None = None  # incremental: changes since this time
    period: str | None = None  # the Civitai period filter the run used
    cursor: str | None = None  # next page to fetch; committed with each page's records
    pages: int = 0
    items: int = 0
    versions: int = 0
    new_inpainting: int = 0
    errors: int = 0  # every error the run met
    last_error: str | None = None
    first_errors: str | None = None  # JSON: the first 50 errors, [{"source", "url", "reason"}, ...]
    # Civitai's header proofs: files read (unreadable ones included); of those, not a checkpoint, malformed or
    # gone (404/410); and files not read (401/403/429/5xx, a dropped connection: asked again by the next crawl)
    headers_read: int = 0
    headers_unreadable: int = 0
    headers_deferred: int = 0


class CrawlLock(SQLModel, table=True):
    """One row per source while a crawl runs; inserting it is the atomic "is anyone else crawling?" check."""

    source: str = Field(primary_key=True)
    run_id: int
    host: str
    pid: int
    heartbeat_at: datetime


class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


class Artifact(SQLModel, table=True):
    """A checkpoint this tool made or fetched on this host: a build's recipe and where its output is."""

    id: str = Field(primary_key=True)  # the recipe key: sha256 of A, B, C, M, dtype, engine version (or a release)
    kind: str  # "built" | "downloaded-release"
    model_id: str | None = Field(default=None, index=True)  # the registry model it is for (B's)
    version_id: str | None = None
    a_sha256: str | None = None
    b_sha256: str | None = None
    c_sha256: str | None = None
    multiplier: float | None = None
    dtype: str | None = None
    engine: str = ""  # merge engine version
    path: str  # absolute
    size: int = Field(sa_type=BigInteger)
    sha256: str
    mtime_ns: int = Field(sa_type=BigInteger)  # with size: the file is still the one recorded
    host: str = ""
    created_at: datetime


class SchemaMigration(SQLModel, table=True):
    """One row per migration applied, in order; ``max(id)`` is the registry's schema version."""

    __tablename__ = "schema_migration"
    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str
    applied_at: datetime


class HeaderProof(SQLModel, table=True):
    """What a Civitai file's safetensors header showed, read with a range request where the version's metadata
    was ambiguous; keyed by the file's SHA256 (a file is proven once, whatever model or host it is under)."""

    key: str = Field(primary_key=True)  # upper-case sha256, or "file:<id>" for a file without one
    variant: str | None = None  # inpaint | fill | normal | pix2pix | depth; None: could not be read
    arch: str | None = None
    in_channels: int | None = None
    how: str = ""
    problem: str | None = None
    checked_at: datetime


# The Core tables every query is written against (the classes above describe them, and carry rows they read).
SOURCE = table_of(Source)
FAMILY = table_of(Family)
MODEL = table_of(Model)
VERSION = table_of(Version)
FILE = table_of(File)
INPAINT_LINK = table_of(InpaintLink)
SAME_FILE = table_of(SameFile)
OFFICIAL_CHECK = table_of(OfficialCheck)
JOB_RUN = table_of(JobRun)
ROUTE_CHECK = table_of(RouteCheck)
CRAWL_RUN = table_of(CrawlRun)
CRAWL_LOCK = table_of(CrawlLock)
META = table_of(Meta)
ARTIFACT = table_of(Artifact)
SCHEMA_MIGRATION = table_of(SchemaMigration)
HEADER_PROOF = table_of(HeaderProof)


Record = TypeVar("Record", bound=SQLModel)


@cache
def _kinds(table: Table) -> tuple[frozenset[str], frozenset[str]]:
    def is_a(column, kind: type) -> bool:
        return isinstance(getattr(column.type, "impl", column.type), kind)  # SQLModel's UTCDateTime decorates

    times = frozenset(c.name for c in table.c if is_a(c, DateTime))
    flags = frozenset(c.name for c in table.c if is_a(c, Boolean))
    return times, flags


def typed(table: Table, row) -> dict:
    """A row of ``table`` as the driver gave it (see ``crawler.registry.sql``), with the Python types its record
    holds: SQLite hands timestamps back as text and booleans as 0 and 1."""
    values = dict(getattr(row, "_mapping", row))
    times, flags = _kinds(table)
    for name in values.keys() & times:
        values[name] = read_time(values[name])
    for name in values.keys() & flags:
        if values[name] is not None:
            values[name] = bool(values[name])
    return values


def as_record(model: type[Record], row) -> Record:
    """The record of a row read from ``model``'s table."""
    return model(**typed(table_of(model), row))
