"""The sources the registry is filled from, each a package behind one interface (``Source``): Civitai
(``crawler/civitai/``) and the Hugging Face Hub (``crawler/hf/``). Code outside a source's package asks this
module for the source of an id or a query and calls the interface, so a third source is one new package with a
``source.py`` and one name in ``NAMES``.

Importing this module is cheap: a source's package is imported when it is first asked for, and its network
code when it is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from crawler.http import RetryPolicy
    from crawler.registry import ModelRecord, Registry, RunSummary, VersionRecord
    from data.settings import Sites

NAMES = ("civitai", "hf")  # every source, in the order `crawl all` runs them


@dataclass(frozen=True)
class Ref:
    """What a live lookup asks one source for: a model (a Civitai id, a Hub repo), a version of it, a file's
    SHA256 or a name to search."""

    model: str | None = None
    version: str | None = None
    file_hash: str | None = None
    text: str | None = None

    def __str__(self) -> str:
        return self.model or self.version or self.file_hash or self.text or "?"


@dataclass(frozen=True)
class Where:
    """Where a registry version is read about and fetched from, as answers print it: ids in, URLs built here,
    never taken from the registry (a stranger's download URL could point anywhere)."""

    name: str  # how an answer names it
    page_url: str
    download_url: str | None  # None: no single file to fetch (a diffusers folder)
    repo: str | None = None  # a Hub repo, fetched with the Hub's own tool
    file: str | None = None


@dataclass(frozen=True)
class Download:
    """A registry version's file for the build's download engine: where it comes from (credentials in the URL
    and the token included: never printed) and the cache folder it goes to, as path components (from ids and
    names: the caller makes each one safe)."""

    url: str
    name: str | None
    sha256: str | None
    size: int | None
    token: str | None
    cache: tuple[str, ...]
    repo: str | None = None  # a Hub file: its repo and path (the user's Hugging Face cache may hold it)
    path: str | None = None
    folder: bool = False  # a diffusers folder: its parts are listed by the Hub, not one file


class Source(Protocol):
    name: str  # the prefix of its registry ids ("civitai:123", "hf:author/repo")
    label: str  # as a sentence names it
    token_variable: str  # the environment variable its key is read from
    searches: bool  # answers names and file hashes (not only its own ids)

    def endpoint(self, url: str | None = None) -> str:
        """Where it is asked: ``url``, else the settings' (credentials included: for requests, not print)."""
        ...

    def crawl(self, reg: Registry, *, mode: str = "full", url: str | None = None,
              policy: RetryPolicy | None = None, on_page: Callable | None = None,
              on_retry: Callable[[str], None] | None = None) -> RunSummary:  # fmt: skip
        """Every model of the source into the registry, resumably."""
        ...

    def fetch_one(self, connect: Callable[[], Registry], ref: Ref, *, url: str | None = None) -> None:
        """Ask the source live about one model and store what it says through ``connect()`` (called only when
        there is something to store). CrawlError when it cannot be asked; ``crawler.http.Unavailable`` when it
        says the model is not there for us."""
        ...

    def fetch_by_hashes(self, connect: Callable[[], Registry], hashes: list[str], *, url: str | None = None) -> int:
        """The models whose files have these SHA256s, stored; how many were found (0 for a source that cannot
        search by hash)."""
        ...

    def display_name(self, model: ModelRecord, version: VersionRecord | None) -> str:
        """How an answer names the model (and the version, when given and the source names versions)."""
        ...

    def local_name(self, model: ModelRecord, version: VersionRecord | None) -> str | None:
        """What a download of the version leaves, as a merge reads it: a file name, or a folder ending in "/"."""
        ...

    def where(self, model: ModelRecord, version: VersionRecord, sites: Sites) -> Where: ...

    def download(self, model: ModelRecord, version: VersionRecord) -> Download: ...

    def query(self, model_id: str, version_id: str | None = None) -> str:
        """What to type to look the model (that version of it) up again."""
        ...

    def output_stem(self, file_stem: str, model_id: str, version_id: str) -> str:
        """A build's file name before ``.safetensors``: UI-friendly, and carrying what no stranger's file can
        take (a version id, a repo)."""
        ...

    def fetch_argv(self, model_id: str, file: str, into: str) -> list[str] | None:
        """The command that fetches the model's file (``into``: where a merge reads it, a folder ending in
        "/"), for an answer to print; None where the user is expected to have it (its page says how)."""
        ...

    def is_official(self, model_id: str) -> bool:
        """Whether the model (its registry id) is a family's official base or inpainting model (data/families.json
        names them): no fine-tune to build from."""
        ...


def get(name: str) -> Source:
    if name not in NAMES:
        raise KeyError(f"no source {name!r}")
    return importlib.import_module(f"crawler.{name}.source").SOURCE


def of_id(registry_id: str) -> Source | None:
    """The source of a registry id ("civitai:123", "hf:author/repo@file"), None for another kind of id."""
    prefix = registry_id.split(":", 1)[0]
    return get(prefix) if prefix in NAMES and ":" in registry_id else None


def searching() -> list[Source]:
    """The sources that answer names and file hashes, in order."""
    return [s for s in map(get, NAMES) if s.searches]
