"""Civitai as a source (``crawler.sources.Source``): ids ``civitai:<model>`` and ``civitai:v<version>``; it
answers names and file hashes as well as its own ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from crawler.civitai.ids import file_number, version_number
from crawler.sources import Download, Ref, Source, Where
from data import settings

if TYPE_CHECKING:
    from crawler.http import RetryPolicy
    from crawler.registry import ModelRecord, Registry, RunSummary, VersionRecord
    from data.settings import Sites




class Civitai:
    name = "civitai"
    label = "Civitai"
    token_variable = "CIVITAI_API_TOKEN"
    searches = True

    def endpoint(self, url: str | None = None) -> str:
        from crawler.civitai.api import api_url

        return api_url(url)

    def crawl(self, reg: Registry, *, mode: str = "full", url: str | None = None,
              policy: RetryPolicy | None = None, on_page: Callable | None = None,
              on_retry: Callable[[str], None] | None = None) -> RunSummary:  # fmt: skip
        from crawler.civitai.api import crawl

        return crawl(reg, mode=mode, base_url=url, policy=policy, on_page=on_page, on_retry=on_retry)

    def fetch_one(self, connect: Callable[[], Registry], ref: Ref, *, url: str | None = None) -> None:
        from crawler.civitai.api import fetch_items, store_page

        items = fetch_items(model_id=ref.model, version_id=ref.version, file_hash=ref.file_hash, text=ref.text,
                            base_url=url)  # fmt: skip
        if items:  # Civitai answers a model it lacks with nothing: there is nothing to store, nor a registry to open
            store_page(connect(), items, None, None)

    def fetch_by_hashes(self, connect: Callable[[], Registry], hashes: list[str], *, url: str | None = None) -> int:
        from crawler.civitai.api import fetch_by_hashes, store_page

        items = fetch_by_hashes(hashes, base_url=url)
        if items:
            store_page(connect(), items, None, None)
        return len(items)

    def display_name(self, model: ModelRecord, version: VersionRecord | None) -> str:
        return model.name + (f" {version.name}" if version else "")

    def local_name(self, model: ModelRecord, version: VersionRecord | None) -> str | None:
        return version.primary_file if version else None

    def where(self, model: ModelRecord, version: VersionRecord, sites: Sites) -> Where:
        number = version_number(version.id)
        return Where(f"{model.name} — {version.name}", sites.civitai_page(model.source_id, number),
                     sites.civitai_download(number, file_number(version.primary_file_id)),
                     file=version.primary_file)  # fmt: skip

    def download(self, model: ModelRecord, version: VersionRecord) -> Download:
        number = version_number(version.id)
        now = settings.current()
        return Download(
            # the URL with its credentials, and the file pinned (its SHA256 is the one recorded)
            settings.Sites(civitai_url=now.civitai_url).civitai_download(number, file_number(version.primary_file_id)),
            name=version.primary_file, sha256=version.sha256,
            size=int(version.size_kb * 1024) if version.size_kb else None, token=now.civitai_token,
            cache=("civitai", number),
        )  # fmt: skip

    def query(self, model_id: str, version_id: str | None = None) -> str:
        return model_id + (f"@{version_number(version_id)}" if version_id and ":v" in version_id else "")

    def output_stem(self, file_stem: str, model_id: str, version_id: str) -> str:
        return f"{file_stem}-inpainting.v{version_number(version_id)}"

    def fetch_argv(self, model_id: str, file: str, into: str) -> list[str] | None:
        return None  # a Civitai fine-tune is the user's own download (its page links it)

    def is_official(self, model_id: str) -> bool:
        return False  # data/families.json names the official checkpoints by their Hub repos


SOURCE: Source = Civitai()  # mypy holds it to the interface
