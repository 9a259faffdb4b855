"""What team-mode tests and benchmarks/bench_queue.py share: a registry of tiny SD 1.5 models served by a fake
Civitai and storage, local A and C, and a worker's environment."""

import contextlib
import datetime
import hashlib
import os
import random
from pathlib import Path

from crawler import civitai, registry
from crawler.http import RetryPolicy
from tests.build_world import build_servers
from tests.civitai_fake import synthetic_item
from tests.conftest import cli_env
from tests.hf_fake import FakeHub
from tests.sd_layouts import write_checkpoint
from tests.storage_fake import Blob

# A worker's timings, shortened: heartbeats twice a second, a job stalled after 3 s without one, the stalled-job
# sweep every second, retries 1 s apart.
FAST = {"INPAINT_ADVISOR_WORKER_HEARTBEAT": "0.5", "INPAINT_ADVISOR_WORKER_STALL_AFTER": "3",
        "INPAINT_ADVISOR_RECOVER_CRON": "* * * * * */1", "INPAINT_ADVISOR_RETRY_WAIT": "1"}  # fmt: skip


def _item(mid: int, data: bytes, storage, fake, storage_url: str) -> dict:
    item = synthetic_item(mid, random.Random(mid), datetime.datetime(2025, 1, 1))
    item["name"] = f"Team Model {mid}"
    item["modelVersions"] = item["modelVersions"][:1]
    v = item["modelVersions"][0]
    v["baseModel"], v["baseModelType"] = "SD 1.5", "Standard"
    f = v["files"][0]
    f["name"], f["sizeKB"] = f"teamModel{mid}.safetensors", len(data) / 1024
    f["hashes"] = {"SHA256": hashlib.sha256(data).hexdigest().upper()}
    storage.blobs[str(v["id"])] = Blob(data, f["name"])
    fake.downloads[str(v["id"])] = (f"{storage_url}/blob/{v['id']}?sig=1", False)
    return item


@contextlib.contextmanager
def world(tmp_path: Path, monkeypatch, db: str, n: int, timings: dict | None = None):
    """The registry ``db`` crawled from a fake Civitai of ``n`` tiny SD 1.5 models, their files on fake storage,
    and the official pair as local files (what every worker reads); ``env`` is a worker's environment."""
    shared = tmp_path / "shared"
    shared.mkdir()
    a, c = shared / "a.safetensors", shared / "c.safetensors"
    write_checkpoint(a, "sd1", "inpaint", 1, scale=32)
    write_checkpoint(c, "sd1", "normal", 3, scale=32)
    with build_servers(monkeypatch, tmp_path, FakeHub([])) as up:
        made = tmp_path / "made"
        made.mkdir()
        items = []
        for i in range(n):
            b = made / f"b{i}.safetensors"
            write_checkpoint(b, "sd1", "normal", 100 + i, scale=32)
            items.append(_item(700001 + i, b.read_bytes(), up.storage, up.civitai, up.storage_url))
        up.civitai.items = items
        civitai.crawl(registry.connect(db), base_url=up.civitai_url, policy=RetryPolicy(attempts=2))
        env = cli_env(INPAINT_ADVISOR_DB=db, INPAINT_ADVISOR_CACHE=os.environ["INPAINT_ADVISOR_CACHE"],
                      INPAINT_ADVISOR_CIVITAI_URL=up.civitai_url, HF_ENDPOINT=os.environ["HF_ENDPOINT"],
                      HF_HUB_CACHE=os.environ["HF_HUB_CACHE"], **(timings or {}))  # fmt: skip
        monkeypatch.setenv("INPAINT_ADVISOR_DB", db)
        yield {"db": db, "a": a, "c": c, "out": shared / "out", "env": env, "storage": up.storage, "n": n,
               "queries": [f"civitai:{700001 + i}" for i in range(n)], "tmp": tmp_path}  # fmt: skip
