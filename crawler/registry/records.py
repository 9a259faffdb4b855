"""What the registry hands out: plain records of models, versions, links, builds and Hub checks, with no
query behind them (the ladder weighs them without a registry: tests build them by hand)."""

from dataclasses import dataclass, field


@dataclass
class VersionRecord:
    id: str
    model_id: str
    name: str
    base_model: str | None
    family: str | None
    published_at: str | None  # "YYYY-MM-DD HH:MM:SS.ffffff", UTC, on both engines
    position: int
    is_inpainting: bool
    evidence: list[str] = field(default_factory=list)
    primary_file: str | None = None
    sha256: str | None = None
    download_url: str | None = None
    size_kb: float | None = None  # of the primary file, as the source records it
    primary_file_id: str | None = None  # its registry id ("civitai:f<file id>"): a download asks for that file


@dataclass
class ModelRecord:
    id: str
    source: str
    source_id: str
    name: str
    creator: str | None
    base_model: str | None
    family: str | None
    is_inpainting: bool
    has_inpainting: bool
    score: float = 100.0  # how well a free-text query named it, when it was searched for
    name_norm: str = ""
    downloads: int = 0


@dataclass
class LinkRecord:
    inpaint_version_id: str
    inpaint_model_id: str
    parent_model_id: str
    parent_version_id: str | None
    kind: str
    confidence: float
    evidence: list[str]


@dataclass
class ArtifactRecord:
    kind: str  # built | downloaded-release
    path: str
    size: int
    sha256: str
    version_id: str | None
    created_at: str | None


@dataclass
class OfficialState:
    alive: bool
    matches: bool
    checked_at: str
    detail: str


@dataclass
class RouteFileState:
    alive: bool
    file_found: bool
    size: int | None
    sha256: str | None
    matches: bool
    checked_at: str
    detail: str
