"""What build tests share: the fake Hub, signed storage and Civitai started together, and the environment
that points a build at them and at a private cache."""

import contextlib
import copy
import datetime
import hashlib
import random
from dataclasses import dataclass

from crawler import civitai, registry
from crawler.http import RetryPolicy
from tests.civitai_fake import FakeCivitai, Server, synthetic_item
from tests.hf_fake import FakeFile, FakeHub, FakeRepo, HubServer, point_official_pair
from tests.sd_layouts import write_checkpoint
from tests.storage_fake import Blob, FakeStorage, StorageServer


class RealFile(FakeFile):
    """A Hub file whose lfs.sha256 is its content's (the fixture hub's default is a made-up one)."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class Servers:
    storage: FakeStorage
    civitai: FakeCivitai
    storage_url: str
    civitai_url: str


@contextlib.contextmanager
def build_servers(monkeypatch, tmp_path, hub: FakeHub):
    storage, fake = FakeStorage(), FakeCivitai([])
    with HubServer(hub) as hub_url, StorageServer(storage) as storage_url, Server(fake) as civitai_url:
        monkeypatch.setenv("HF_ENDPOINT", hub_url)
        monkeypatch.setenv("INPAINT_ADVISOR_CIVITAI_URL", civitai_url)
        monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        yield Servers(storage, fake, storage_url, civitai_url)


A_REPO, C_REPO = "test/sd1-inpainting", "test/sd1-base"


def _bytes_of(tmp_path, name, variant, seed, **kw) -> bytes:
    path = tmp_path / "made" / name
    path.parent.mkdir(exist_ok=True)
    write_checkpoint(path, "sd1", variant, seed, **kw)
    return path.read_bytes()


@contextlib.contextmanager
def sd1_world(tmp_path, monkeypatch, registry_db: str):
    """A registry crawled from a fake Civitai with two SD 1.5 models (one with an inpainting release for its
    newest version), their files on fake storage, and the official SD 1.x pair on a fake Hub."""
    a, c = _bytes_of(tmp_path, "a.safetensors", "inpaint", 1), _bytes_of(tmp_path, "c.safetensors", "normal", 3)
    b = _bytes_of(tmp_path, "b.safetensors", "normal", 2)
    b2 = _bytes_of(tmp_path, "b2.safetensors", "normal", 5)
    release = _bytes_of(tmp_path, "r.safetensors", "inpaint", 4)
    hub = FakeHub([FakeRepo(A_REPO, files={"sd-v1-5-inpainting.safetensors": RealFile(a)}),
                   FakeRepo(C_REPO, files={"v1-5-pruned-emaonly.safetensors": RealFile(c)})])  # fmt: skip
    with build_servers(monkeypatch, tmp_path, hub) as up:
        storage, fake, storage_url, civitai_url = up.storage, up.civitai, up.storage_url, up.civitai_url
        # the bundled data's official SD 1.x pair, pointed at the fake Hub's tiny files
        point_official_pair(monkeypatch, "sd1", (A_REPO, "sd-v1-5-inpainting.safetensors", a),
                            (C_REPO, "v1-5-pruned-emaonly.safetensors", c))  # fmt: skip
        items = []
        for mid, data, inpaint, base in ((600001, b, None, "SD 1.5"), (600002, b2, release, "SD 1.5"),
                                         (600003, b, None, "Flux.1 D")):  # fmt: skip
            item = synthetic_item(mid, random.Random(mid), datetime.datetime(2025, 1, 1))
            item["name"] = f"Tiny Model {mid}"
            for v in item["modelVersions"]:
                v["baseModel"], v["baseModelType"] = base, "Standard"
                f = v["files"][0]
                f["name"], f["sizeKB"] = f"tinyModel{mid}_{v['name']}.safetensors", len(data) / 1024
                f["hashes"] = {"SHA256": hashlib.sha256(data).hexdigest().upper()}
                storage.blobs[str(v["id"])] = Blob(data, f["name"])
                fake.downloads[str(v["id"])] = (f"{storage_url}/blob/{v['id']}?sig=1", False)
            if inpaint is not None:  # the newest version's inpainting release, as a version of its own
                rel = copy.deepcopy(item["modelVersions"][0])
                rel["id"], rel["name"], rel["baseModelType"] = 9999001, rel["name"] + "-inpainting", "Inpainting"
                rel["files"] = rel["files"][:1]
                rf = rel["files"][0]
                rf["id"] = 99990010
                rf["name"], rf["hashes"] = "tinyRelease-inpainting.safetensors", {"SHA256": hashlib.sha256(inpaint)
                                                                                 .hexdigest().upper()}  # fmt: skip
                rf["sizeKB"] = len(inpaint) / 1024
                storage.blobs["9999001"] = Blob(inpaint, rf["name"])
                fake.downloads["9999001"] = (f"{storage_url}/blob/9999001?sig=1", False)
                item["modelVersions"].insert(0, rel)
            items.append(item)
        fake.items = items
        civitai.crawl(registry.open(registry_db), base_url=civitai_url, policy=RetryPolicy(attempts=2))
        yield {"db": registry_db, "storage": storage, "hub": hub, "tmp": tmp_path, "b": b, "civitai": fake}
