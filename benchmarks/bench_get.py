#!/usr/bin/env python3
"""`scan --get` on a ComfyUI folder of N SDXL fine-tunes, whose answer is the same route for all (the Fooocus
inpaint patch and its head), against the naive approach that fetches each model's route files for that model
(one download per model, as a per-model `hf download` or a tool without shared destinations does), in one run.

    python benchmarks/bench_get.py [--models 20] [--patch-mb 128]

Both fetch from the same local Hub (127.0.0.1, the files held in memory) through the same download engine
(verified against the pinned SHA256, resumable); the patch is --patch-mb (the real one is 1.32 GB). Target
(issue #29): the family's shared route is fetched once for the folder, whatever N is.
"""

import argparse
import copy
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PATCH, HEAD, REPO = "inpaint_v26.fooocus.patch", "fooocus_inpaint_head.pth", "lllyasviel/fooocus_inpaint"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=20, help="SDXL fine-tunes in the folder")
    parser.add_argument("--patch-mb", type=int, default=128, help="size of the served patch file")
    args = parser.parse_args()

    from advisor.advice import routes
    from advisor.build.download import Source, fetch
    from advisor.get.batch import get_folder
    from advisor.local.scan import scan
    from tests.build_world import RealFile
    from tests.hf_fake import FakeHub, FakeRepo, HubServer
    from tests.sd_layouts import write_checkpoint

    served = {PATCH: RealFile(os.urandom(args.patch_mb << 20)), HEAD: RealFile(os.urandom(52_600))}
    data = copy.deepcopy(routes._data())
    spec = next(r for r in data["routes"] if r["id"] == "fooocus-inpaint")
    for f in spec["files"]:
        f.update(sha256=hashlib.sha256(served[f["file"]].content).hexdigest(), size=len(served[f["file"]].content))
    routes._data = lambda: data  # type: ignore[method-assign]  # the pins of what this Hub serves
    hub = FakeHub([FakeRepo(REPO, files=served)])
    with tempfile.TemporaryDirectory(prefix="bench-get-") as tmp, HubServer(hub) as url:
        tmp_path = Path(tmp)
        os.environ.update(HF_ENDPOINT=url, INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"),
                          HF_HUB_CACHE=str(tmp_path / "hf-cache"))  # fmt: skip
        root = tmp_path / "ComfyUI"
        (root / "comfy").mkdir(parents=True)
        checkpoints = root / "models" / "checkpoints"
        checkpoints.mkdir(parents=True)
        for i in range(args.models):
            write_checkpoint(checkpoints / f"sdxlTune{i:02}.safetensors", "sdxl", "normal", i, scale=32)
        db = str(tmp_path / "registry.db")

        start = time.perf_counter()
        (scanned,) = scan([root], db=db, offline=True)
        batch = get_folder(scanned, db=db)
        ours = time.perf_counter() - start
        ours_requests = sum("/resolve/" in r for r in hub.requests)
        assert batch.count("done") == args.models, [i.reason for i in batch.items if i.status == "failed"]

        hub.requests.clear()
        start = time.perf_counter()
        for i in range(args.models):  # naive: each model's route files fetched for that model
            for name, f in served.items():
                fetch(Source(f"{url}/{REPO}/resolve/main/{name}", name=name, sha256=f.sha256,
                             size=len(f.content)), tmp_path / "naive" / str(i))  # fmt: skip
        naive = time.perf_counter() - start
        naive_requests = sum("/resolve/" in r for r in hub.requests)

    size = sum(len(f.content) for f in served.values())
    print(f"{args.models} SDXL fine-tunes, one route (patch {args.patch_mb} MB + head), local Hub")
    print(f"  scan --get : {ours:6.2f} s, {ours_requests:3} file requests, {size / 1e6:8.1f} MB fetched "
          f"({batch.files} distinct files placed)")
    print(f"  naive      : {naive:6.2f} s, {naive_requests:3} file requests, "
          f"{args.models * size / 1e6:8.1f} MB fetched")
    print(f"  {naive / ours:.1f}x faster, {naive_requests // max(ours_requests, 1)}x fewer downloads")


if __name__ == "__main__":
    main()
