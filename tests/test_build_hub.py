"""`build` with Hub-shaped inputs: SDXL's official A is a diffusers folder, a fine-tune may be a Hub diffusers
repo, and files the user's Hugging Face cache already holds are used from there, not fetched again."""

import datetime
import hashlib
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from advisor.build import BuildError, build
from crawler import civitai, registry
from crawler.http import RetryPolicy
from merge.engine import merge
from tests.build_world import RealFile, build_servers
from tests.civitai_fake import synthetic_item
from tests.diffusers_layout import write_diffusers
from tests.hf_fake import FakeHub, FakeRepo, lineage_tags, point_official_pair
from tests.sd_layouts import write_checkpoint
from tests.storage_fake import Blob

A_REPO, C_REPO, B_REPO = "test/sdxl-inpainting", "test/sdxl-base", "someone/sdxl-finetune"
C_FILE = "sd_xl_base_1.0.safetensors"


def _folder_files(folder) -> dict[str, RealFile]:
    return {str(p.relative_to(folder)): RealFile(p.read_bytes(), lfs=p.suffix == ".safetensors")
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture
def sdxl(tmp_path, monkeypatch, registry_db):
    made = tmp_path / "made"
    made.mkdir()
    write_diffusers(made / "a", write_checkpoint(made / "a.safetensors", "sdxl", "inpaint", 1, scale=32), "sdxl")
    write_checkpoint(made / C_FILE, "sdxl", "normal", 3, scale=32)
    write_checkpoint(made / "b.safetensors", "sdxl", "normal", 2, scale=32)
    write_diffusers(made / "hub-b", write_checkpoint(made / "hb.safetensors", "sdxl", "normal", 4, scale=32), "sdxl")
    a_files = _folder_files(made / "a")
    unet = "unet/diffusion_pytorch_model.fp16.safetensors"
    assert unet in a_files
    hub = FakeHub([FakeRepo(A_REPO, files=a_files),
                   FakeRepo(C_REPO, files={C_FILE: RealFile((made / C_FILE).read_bytes())}),
                   FakeRepo(B_REPO, files=_folder_files(made / "hub-b"),
                            tags=lineage_tags("stabilityai/stable-diffusion-xl-base-1.0"))],
                  cdn_redirects=True)  # fmt: skip
    with build_servers(monkeypatch, tmp_path, hub) as up:
        storage, fake, storage_url, civitai_url = up.storage, up.civitai, up.storage_url, up.civitai_url
        point_official_pair(monkeypatch, "sdxl", (A_REPO, unet, a_files[unet].content),
                            (C_REPO, C_FILE, (made / C_FILE).read_bytes()))  # fmt: skip
        b = (made / "b.safetensors").read_bytes()
        item = synthetic_item(610001, random.Random(1), datetime.datetime(2025, 1, 1))
        item["name"], item["modelVersions"] = "Tiny XL", item["modelVersions"][:1]
        v = item["modelVersions"][0]
        v["baseModel"], v["baseModelType"] = "SDXL 1.0", "Standard"
        v["files"] = v["files"][:1]
        f = v["files"][0]
        f["name"], f["sizeKB"] = "tinyXL.safetensors", len(b) / 1024
        f["hashes"] = {"SHA256": hashlib.sha256(b).hexdigest()}
        storage.blobs[str(v["id"])] = Blob(b, f["name"])
        fake.downloads[str(v["id"])] = (f"{storage_url}/blob/{v['id']}?sig=1", False)
        fake.items = [item]
        civitai.crawl(registry.open(registry_db), base_url=civitai_url, policy=RetryPolicy(attempts=2))
        yield {"db": registry_db, "hub": hub, "tmp": tmp_path, "made": made, "b": b}


def _resolved(hub, repo: str) -> set[str]:
    """The files of ``repo`` that were downloaded (at any revision)."""
    return {r.split("/resolve/", 1)[1].split("?")[0].split("/", 1)[1] for r in hub.requests if f"/{repo}/resolve/" in r}


def _same(x_path, y_path) -> bool:
    x, y = load_file(x_path), load_file(y_path)
    return set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_an_sdxl_fine_tune_is_built_with_the_official_diffusers_folder_as_a(sdxl):
    out = sdxl["tmp"] / "out"
    result = build("civitai:610001", out=out, db=sdxl["db"])
    assert result.action == "built" and result.verified, result.warnings
    assert result.match.family == "sdxl"
    fetched = _resolved(sdxl["hub"], A_REPO)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fetched and "model_index.json" in fetched
    assert all(d.verified for d in result.downloads)  # every file of the folder checked by its lfs.sha256
    assert [r for r in sdxl["hub"].requests if r.startswith(f"/cdn-lfs/{A_REPO}/")]  # weights via the CDN redirect
    made = sdxl["made"]
    merge(made / "a", made / "b.safetensors", made / C_FILE, sdxl["tmp"] / "by-hand.safetensors")
    assert _same(result.output.path, sdxl["tmp"] / "by-hand.safetensors")


def test_a_hub_diffusers_fine_tune_is_fetched_as_a_folder_and_built(sdxl):
    out = sdxl["tmp"] / "out"
    result = build(f"https://huggingface.co/{B_REPO}", out=out, db=sdxl["db"])
    assert result.action == "built", result.warnings
    assert result.match.family == "sdxl" and result.inputs["B"].source == "hf-folder"
    b_files = _resolved(sdxl["hub"], B_REPO)
    assert {"unet/diffusion_pytorch_model.fp16.safetensors", "model_index.json"} <= b_files
    merge(sdxl["made"] / "a", sdxl["made"] / "hub-b", sdxl["made"] / C_FILE, sdxl["tmp"] / "by-hand.safetensors")
    assert _same(result.output.path, sdxl["tmp"] / "by-hand.safetensors")


def _into_hf_cache(tmp, repo: str, name: str, content: bytes):
    """A file laid out as huggingface_hub's cache holds it (refs/main -> snapshots/<commit>/<name>)."""
    root = tmp / "hf-cache" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / name).write_bytes(content)
    return snap / name


def test_a_file_in_the_users_hugging_face_cache_is_used_not_fetched(sdxl):
    cached = _into_hf_cache(sdxl["tmp"], C_REPO, C_FILE, (sdxl["made"] / C_FILE).read_bytes())
    result = build("civitai:610001", out=sdxl["tmp"] / "out", db=sdxl["db"])
    assert result.action == "built" and result.verified
    assert not [r for r in sdxl["hub"].requests if f"/{C_REPO}/resolve/" in r]
    assert result.inputs["C"].path == str(cached)


def test_a_different_file_under_the_name_in_the_hf_cache_is_not_used(sdxl):
    _into_hf_cache(sdxl["tmp"], C_REPO, C_FILE, b"not the official base")
    result = build("civitai:610001", out=sdxl["tmp"] / "out", db=sdxl["db"])
    assert result.action == "built" and result.verified
    assert [r for r in sdxl["hub"].requests if f"/{C_REPO}/resolve/" in r]  # fetched: the cached one is not it
    assert "hf-cache" not in result.inputs["C"].path


def test_the_dry_run_of_an_sdxl_build_lists_the_folder_and_fetches_nothing(sdxl):
    before = list(sdxl["hub"].requests)
    result = build("civitai:610001", out=sdxl["tmp"] / "out", db=sdxl["db"], dry_run=True)
    assert result.action == "planned"
    assert [p.role for p in result.plan] == ["A", "B", "C"] and "diffusers folder" in result.plan[0].what
    assert not [r for r in sdxl["hub"].requests[len(before):] if "/resolve/" in r]
    assert json.dumps(result.disk_needed)


def test_an_offline_dry_run_touches_no_network_and_an_offline_build_uses_what_the_cache_holds(sdxl):
    """--offline means no request at all: before anything is cached it says what is missing at once (it used
    to retry the Hub for half a minute); after one online build, the same build runs offline."""
    before = len(sdxl["hub"].requests)
    with pytest.raises(BuildError) as offline:
        build("civitai:610001", out=sdxl["tmp"] / "out", db=sdxl["db"], dry_run=True, offline=True)
    assert offline.value.code == "offline" and len(sdxl["hub"].requests) == before
    build("civitai:610001", out=sdxl["tmp"] / "first", db=sdxl["db"])  # online: A's listing and files cached
    seen = len(sdxl["hub"].requests)
    planned = build("civitai:610001", out=sdxl["tmp"] / "again", db=sdxl["db"], dry_run=True, offline=True,
                    dtype="fp32")  # another recipe: planned, from what the cache holds
    assert planned.action == "planned" and planned.plan[0].state in ("cached", "prepared")
    assert len(sdxl["hub"].requests) == seen
