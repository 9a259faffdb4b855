"""What `get` answers: the files it places (each with its source, destination and check), the answer it acts on,
and the steps left to the user; its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from advisor.advice.lookup import Match
from advisor.build.builder import BuildResult
from data.errors import InpaintAdvisorError

CHECKPOINT_KINDS = ("already-inpainting", "own-release", "sibling-release", "community-release", "official", "build",
                    "built")  # fmt: skip


class GetError(InpaintAdvisorError):
    """`get` cannot do what was asked; nothing was fetched under a final name. ``code`` names the kind."""

    code = "get-failed"


@dataclass
class Placement:
    """One file `get` puts in the UI: where from, where to, how it is checked, and (run) what became of it."""

    kind: str  # a kind of data/uis.json: checkpoint, controlnet, inpaint, ...
    name: str
    folder: str
    url: str  # public: no credentials
    sha256: str | None  # pinned (upper-case); None: hashed when fetched, and said to be unverified
    size: int | None  # exact bytes, where known (a download of another size is refused)
    pinned_by: str | None = None  # where the SHA256 comes from
    approx_size: int | None = None  # the size the Hub shows, rounded ("1.32 GB"): for the disk needed only
    state: str = "missing"  # present | partial | missing | other-file; after a run: fetched | copied | present
    path: str | None = None
    verified: bool = False
    bytes: int = 0  # fetched by this run
    label: str = ""  # what it is for, as messages name it
    _fetch_url: str = field(default="", repr=False)  # with credentials (a mirror's user), never printed
    _token: str | None = field(default=None, repr=False)
    _cached: tuple[str, ...] = field(default=(), repr=False)  # build-cache paths that may already hold it
    # why placing it failed in this batch (a Placement is shared by the models of a batch): not tried again
    _failed: tuple[str, str] | None = field(default=None, repr=False)  # (message, code)

    @property
    def destination(self) -> str:
        return str(Path(self.folder) / self.name)

    def __json__(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")} | {"destination": self.destination}


@dataclass
class Answer:
    kind: str  # a recommendation kind (own-release, official, build, patch, controlnet, ...)
    name: str
    reason: str
    route: str | None = None
    score: int | None = None


@dataclass
class GetResult:
    query: str
    action: str  # planned | ready (everything in place) | nothing (the model itself inpaints, on disk already)
    ui: str
    ui_name: str
    root: str
    recognised: bool  # the UI was told from its folder (False: taken as the UI the caller named)
    match: Match | None
    answer: Answer
    files: list[Placement] = field(default_factory=list)
    disk_needed: int = 0
    needs: list[str] = field(default_factory=list)  # custom nodes or extensions, by repository URL
    steps: list[str] = field(default_factory=list)  # what to do in the UI
    passed_over: list[str] = field(default_factory=list)  # better answers this UI cannot use, with why
    build: BuildResult | None = None
    checkpoint: str | None = None  # where the build's (or a copied build's) checkpoint is, or will be
    workflow: dict | None = None  # ComfyUI: the model wired with its partner, API format (advisor.get.workflow)
    workflow_path: str | None = None  # where it is written
    warnings: list[str] = field(default_factory=list)
