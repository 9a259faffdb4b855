"""What team-mode tests and benchmarks/bench_queue.py share: a registry of tiny SD 1.5 models served by a fake
Civitai and storage, the family's official pair on a fake Hub (what every worker fetches), and a worker's
environment and command line.

Run as ``python -m tests.team_world PAIR.json worker ...`` it is a worker whose bundled data points the
official SD 1.x pair at the fake Hub (``world()`` writes PAIR.json) and whose downloads give up after two quick
tries (a test of a failing server need not wait out eight); anything else is the real `inpaint-advisor`. The
heavy imports stay inside ``world()``, so that a worker starts as fast as the real one."""

import contextlib
import datetime
import hashlib
import json
import os
import random
import sys
from pathlib import Path

# A worker's timings, shortened: heartbeats twice a second, a job stalled after 3 s without one, the stalled-job
# sweep every second, retries 1 s apart.
FAST = {"INPAINT_ADVISOR_WORKER_HEARTBEAT": "0.5", "INPAINT_ADVISOR_WORKER_STALL_AFTER": "3",
        "INPAINT_ADVISOR_RECOVER_CRON": "* * * * * */1", "INPAINT_ADVISOR_RETRY_WAIT": "1"}  # fmt: skip

A_REPO, A_FILE = "test/sd1-inpainting", "sd-v1-5-inpainting.safetensors"
C_REPO, C_FILE = "test/sd1-base", "v1-5-pruned-emaonly.safetensors"


def _item(mid: int, data: bytes, storage, fake, storage_url: str) -> dict:
    from tests.civitai_fake import synthetic_item
    from tests.storage_fake import Blob

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


def _pair(a: bytes, c: bytes) -> dict:
    return {"family": "sd1", "inpaint": [A_REPO, A_FILE, len(a), hashlib.sha256(a).hexdigest()],
            "base": [C_REPO, C_FILE, len(c), hashlib.sha256(c).hexdigest()]}  # fmt: skip


def point_pair(pair: dict) -> None:
    """The bundled data's official pair of ``pair["family"]`` pointed at the fake Hub's files, in this process."""
    import copy

    from crawler import families

    fams = copy.deepcopy(families.all_families())
    spec = next(f for f in fams if f["id"] == pair["family"])
    for role in ("inpaint", "base"):
        repo, name, size, sha256 = pair[role]
        spec[role].update(mirrors=[{"repo": repo, "alive": True}], file=name, size=size, sha256=sha256)
    families.all_families = lambda: fams  # type: ignore[assignment]
    families.by_id = lambda: {f["id"]: f for f in fams}  # type: ignore[assignment]


@contextlib.contextmanager
def world(tmp_path: Path, monkeypatch, db: str, n: int, timings: dict | None = None):
    """The registry ``db`` crawled from a fake Civitai of ``n`` tiny SD 1.5 models, their files on fake storage,
    and the official pair on a fake Hub (``a`` and ``c`` are the same files, local). ``env`` is a worker's
    environment, ``worker`` the start of a worker's command line (then "worker", "--out", ...)."""
    from crawler import civitai, registry
    from crawler.http import RetryPolicy
    from tests.build_world import RealFile, build_servers
    from tests.conftest import cli_env
    from tests.hf_fake import FakeHub, FakeRepo
    from tests.sd_layouts import write_checkpoint

    shared = tmp_path / "shared"
    shared.mkdir()
    a, c = shared / "a.safetensors", shared / "c.safetensors"
    write_checkpoint(a, "sd1", "inpaint", 1, scale=32)
    write_checkpoint(c, "sd1", "normal", 3, scale=32)
    a_bytes, c_bytes = a.read_bytes(), c.read_bytes()
    hub = FakeHub([FakeRepo(A_REPO, files={A_FILE: RealFile(a_bytes)}),
                   FakeRepo(C_REPO, files={C_FILE: RealFile(c_bytes)})])  # fmt: skip
    pair = _pair(a_bytes, c_bytes)
    pair_file = tmp_path / "official-pair.json"
    pair_file.write_text(json.dumps(pair))
    with build_servers(monkeypatch, tmp_path, hub) as up:
        import crawler.families

        monkeypatch.setattr(crawler.families, "all_families", crawler.families.all_families)  # undone after
        monkeypatch.setattr(crawler.families, "by_id", crawler.families.by_id)
        point_pair(pair)  # in this process too (a build or lookup here agrees with the workers)
        made = tmp_path / "made"
        made.mkdir()
        items = []
        for i in range(n):
            b = made / f"b{i}.safetensors"
            write_checkpoint(b, "sd1", "normal", 100 + i, scale=32)
            items.append(_item(700001 + i, b.read_bytes(), up.storage, up.civitai, up.storage_url))
        up.civitai.items = items
        civitai.crawl(registry.open(db), base_url=up.civitai_url, policy=RetryPolicy(attempts=2))
        env = cli_env(INPAINT_ADVISOR_DB=db, INPAINT_ADVISOR_CACHE=os.environ["INPAINT_ADVISOR_CACHE"],
                      INPAINT_ADVISOR_CIVITAI_URL=up.civitai_url, HF_ENDPOINT=os.environ["HF_ENDPOINT"],
                      HF_HUB_CACHE=os.environ["HF_HUB_CACHE"], **(timings or {}))  # fmt: skip
        monkeypatch.setenv("INPAINT_ADVISOR_DB", db)
        yield {"db": db, "a": a, "c": c, "out": shared / "out", "env": env, "storage": up.storage, "n": n,
               "queries": [f"civitai:{700001 + i}" for i in range(n)], "tmp": tmp_path, "hub": hub,
               "worker": [sys.executable, "-m", "tests.team_world", str(pair_file)]}  # fmt: skip


def _as_worker(pair_file: str, argv: list[str]) -> None:
    import runpy

    import advisor.build.download
    from crawler.http import RetryPolicy

    point_pair(json.loads(Path(pair_file).read_text()))
    advisor.build.download.RetryPolicy = lambda **_: RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1)  # type: ignore
    sys.argv = ["inpaint-advisor", *argv]
    runpy.run_module("advisor", run_name="__main__")


if __name__ == "__main__":
    _as_worker(sys.argv[1], sys.argv[2:])
