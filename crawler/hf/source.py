"""The Hugging Face Hub as a source (``crawler.sources.Source``): ids ``hf:author/repo`` and
``hf:author/repo@<file or "diffusers">``; it answers its own repo ids only (the Hub has no search by file hash,
and the crawl walks repos by lineage, not by name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from crawler import families
from crawler.sources import Download, Ref, Source, Where
from data import settings

if TYPE_CHECKING:
    from crawler.http import RetryPolicy
    from crawler.registry import ModelRecord, Registry, RunSummary, VersionRecord
    from data.settings import Sites

LIVE_POLICY_ATTEMPTS = 2  # a live lookup waits on the user: two tries, short pauses


class Hub:
    name = "hf"
    label = "the Hugging Face Hub"
    token_variable = "HF_TOKEN"
    searches = False

    def endpoint(self, url: str | None = None) -> str:
        from crawler.hf.hub import endpoint_from_env

        return endpoint_from_env(url)

    def crawl(self, reg: Registry, *, mode: str = "full", url: str | None = None,
              policy: RetryPolicy | None = None, on_page: Callable | None = None,
              on_retry: Callable[[str], None] | None = None) -> RunSummary:  # fmt: skip
        from crawler.hf.repos import crawl

        return crawl(reg, mode=mode, endpoint=url, policy=policy, on_page=on_page, on_retry=on_retry)

    def fetch_one(self, connect: Callable[[], Registry], ref: Ref, *, url: str | None = None) -> None:
        from crawler.hf.repos import fetch_one
        from crawler.http import RetryPolicy

        assert ref.model is not None  # the Hub is asked about repos only (searches is False)
        fetch_one(connect(), ref.model, endpoint=url,
                  policy=RetryPolicy(attempts=LIVE_POLICY_ATTEMPTS, base_delay=0.5, max_delay=2.0))  # fmt: skip

    def fetch_by_hashes(self, connect: Callable[[], Registry], hashes: list[str], *, url: str | None = None) -> int:
        return 0

    def display_name(self, model: ModelRecord, version: VersionRecord | None) -> str:
        return model.source_id  # "author/repo" is how Hub users say it, whichever file

    def local_name(self, model: ModelRecord, version: VersionRecord | None) -> str | None:
        file = version.primary_file if version else None
        if file is None or "/" in file:  # a diffusers repo: the merge reads the downloaded folder
            return model.source_id.split("/", 1)[1] + "/"
        return file

    def where(self, model: ModelRecord, version: VersionRecord, sites: Sites) -> Where:
        repo, file = model.source_id, version.primary_file
        single = file is not None and "/" not in file  # else a diffusers folder (its unet/... file is named)
        return Where(f"{repo}" + (f" / {file}" if single else " (diffusers folder)"), sites.hub_page(repo),
                     sites.hub_file(repo, file) if single and file else None, repo=repo,
                     file=file if single else None)  # fmt: skip

    def download(self, model: ModelRecord, version: VersionRecord) -> Download:
        repo, path = model.source_id, version.primary_file or ""
        now = settings.current()
        folder = "/" in path
        return Download(
            settings.Sites(hf_endpoint=now.hf_endpoint).hub_file(repo, path),  # the URL with its credentials
            name=path.rsplit("/", 1)[-1] or None, sha256=None if folder else version.sha256,
            size=None, token=now.hf_token,  # the listing at download time says the size
            cache=("hf", repo.replace("/", "--"), *path.split("/")[:-1]), repo=repo, path=path, folder=folder,
        )  # fmt: skip

    def query(self, model_id: str, version_id: str | None = None) -> str:
        return model_id  # "hf:author/repo": which file of the repo is the build's to choose

    def output_stem(self, file_stem: str, model_id: str, version_id: str) -> str:
        return f"{model_id.split(':', 1)[-1].replace('/', '--')}-inpainting"

    def fetch_argv(self, model_id: str, file: str, into: str) -> list[str] | None:
        repo = model_id.split(":", 1)[-1]
        if into.endswith("/"):  # a diffusers repo, fetched as a folder
            return ["hf", "download", "--local-dir", into.rstrip("/"), "--", repo]
        return ["hf", "download", "--local-dir", ".", "--", repo, file]

    def is_official(self, model_id: str) -> bool:
        return families.is_official_repo(model_id.split(":", 1)[-1])  # the official files live on the Hub


SOURCE: Source = Hub()  # mypy holds it to the interface
