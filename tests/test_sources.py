"""The sources behind one interface (crawler.sources): what each says about its own ids, and a third source
reached by `crawl all` and the answers' links without code outside its package."""

import sys
import types
from dataclasses import dataclass

import pytest

from crawler import sources
from crawler.registry import ModelRecord, VersionRecord
from data.settings import Sites

SITES = Sites("https://civitai.example", "https://hub.example")


def _model(source: str, source_id: str, name: str = "Mix") -> ModelRecord:
    return ModelRecord(f"{source}:{source_id}", source, source_id, name, "someone", "SD 1.5", "sd1", False, False)


def _version(version_id: str, file: str | None, sha256: str | None = "AB" * 32) -> VersionRecord:
    return VersionRecord(version_id, "m", "v2.0", "SD 1.5", "sd1", None, 0, False, primary_file=file, sha256=sha256,
                         size_kb=2.0)  # fmt: skip


def test_every_source_is_found_by_its_ids():
    assert sources.of_id("civitai:4384").name == "civitai"
    assert sources.of_id("civitai:v128713").name == "civitai"
    assert sources.of_id("hf:Lykon/dreamshaper-8@diffusers").name == "hf"
    assert sources.of_id("file:/tmp/x.safetensors") is None and sources.of_id("sd1") is None
    assert [s.name for s in sources.searching()] == ["civitai"]  # the Hub has no search by file hash
    with pytest.raises(KeyError):
        sources.get("elsewhere")


def test_civitai_links_and_downloads_are_built_from_ids():
    source = sources.get("civitai")
    model, version = _model("civitai", "4384", "DreamShaper"), _version("civitai:v128713", "dream.safetensors")
    where = source.where(model, version, SITES)
    assert where.page_url == "https://civitai.example/models/4384?modelVersionId=128713"
    assert where.download_url == "https://civitai.example/api/download/models/128713"
    assert where.name == "DreamShaper — v2.0" and where.repo is None and where.file == "dream.safetensors"
    assert source.display_name(model, version) == "DreamShaper v2.0"
    assert source.query(model.id, version.id) == "civitai:4384@128713" and source.query(model.id) == "civitai:4384"
    assert source.output_stem("dream", model.id, version.id) == "dream-inpainting.v128713"
    download = source.download(model, version)
    assert download.url.endswith("/api/download/models/128713") and download.cache == ("civitai", "128713")
    assert download.size == 2048 and download.sha256 == "AB" * 32 and not download.folder


def test_hub_links_and_downloads_name_the_repo():
    source = sources.get("hf")
    model = _model("hf", "author/mix")
    single, folder = _version("hf:author/mix@mix.safetensors", "mix.safetensors"), _version("hf:author/mix@d", "unet/x")
    assert source.where(model, single, SITES).download_url == "https://hub.example/author/mix/resolve/main/mix.safetensors"
    assert source.where(model, folder, SITES).download_url is None  # a diffusers folder: no one file
    assert source.where(model, folder, SITES).name == "author/mix (diffusers folder)"
    assert source.display_name(model, single) == "author/mix"  # how Hub users say it, whichever file
    assert source.local_name(model, single) == "mix.safetensors" and source.local_name(model, folder) == "mix/"
    assert source.output_stem("mix", model.id, single.id) == "author--mix-inpainting"
    assert source.download(model, folder).folder and source.download(model, single).repo == "author/mix"


@dataclass
class _Summary:
    status: str = "ok"


class _Elsewhere:
    """A third source, as a package would define it: only the parts these callers reach."""

    name, label, token_variable, searches = "elsewhere", "Elsewhere", "ELSEWHERE_TOKEN", False
    crawled: list = []

    def crawl(self, engine, *, mode="full", url=None, policy=None, on_page=None, on_retry=None):
        self.crawled.append((engine, mode))
        return _Summary()

    def where(self, model, version, sites):
        page = f"https://elsewhere.example/{model.source_id}"
        return sources.Where(f"{model.name} at Elsewhere", page, f"{page}/file", file=version.primary_file)


@pytest.fixture
def elsewhere(monkeypatch):
    source = _Elsewhere()
    module = types.ModuleType("crawler.elsewhere.source")
    module.SOURCE = source
    monkeypatch.setitem(sys.modules, "crawler.elsewhere", types.ModuleType("crawler.elsewhere"))
    monkeypatch.setitem(sys.modules, "crawler.elsewhere.source", module)
    monkeypatch.setattr(sources, "NAMES", (*sources.NAMES, "elsewhere"))
    return source


def test_a_third_source_is_crawled_by_crawl_all(elsewhere, monkeypatch):
    from crawler import crawl_all

    for name in ("civitai", "hf"):  # the two real ones are tested against their fakes elsewhere
        monkeypatch.setattr(sources.get(name), "crawl", lambda engine, **kw: _Summary())
    result = crawl_all.crawl_all("engine", incremental=True)
    assert [(s.source, s.status) for s in result.sources] == [("civitai", "ok"), ("hf", "ok"), ("elsewhere", "ok")]
    assert elsewhere.crawled == [("engine", "incremental")]


def test_a_third_source_gets_its_own_links_in_answers(elsewhere):
    from advisor.advice import ladder
    from advisor.advice.facts import Release

    model, version = _model("elsewhere", "77", "Far Mix"), _version("elsewhere:77@1", "far.safetensors")
    target = ladder._release_target(Release(model, version), SITES)
    assert (target.source, target.url, target.download_url) == (
        "elsewhere", "https://elsewhere.example/77", "https://elsewhere.example/77/file")
