#!/usr/bin/env python3
"""`build` of SD1.5-size models through local servers, against the naive way with the same bytes, in one run.

    python benchmarks/bench_build.py [--dir DIR] [--models 3] [--parts download,resume,builds,floor]

The official pair is served as the Hub serves it (A an fp32 zip-pickle .ckpt with a nested state_dict, C fp32
safetensors; resolve URLs with ranges), the fine-tunes (fp16, 2.1 GB each) as Civitai serves them (the download
endpoint 307s to a signed storage URL that sends the file with Content-Disposition). Files are sent from disk
with sendfile; values are random, layouts and sizes real (tests/sd_layouts.py).

Printed, against the naive way (a plain streaming copy of the same URLs, no hashing, then `merge` of A, B, C):
- the download: `advisor.build.download.fetch` (hashing SHA256, AutoV2 and AutoV3 as it streams, fsync'd) against
  the plain copy of the same file; target within 1.2x;
- a resume: the connection dropped half-way, the same fetch again; target: it re-fetches at most the missing
  bytes plus one chunk;
- the family's first build (downloads A, C and B, then merges) and each later build (downloads B, then merges),
  start to recorded file, against the bare three-input merge of the same local files with A as the official
  fp32 .ckpt (`merge` of A, B, C); targets: a later build at most 1.1x that merge, the first at most 1.5x
  (timed with the inputs in the page cache, then read from disk); and each build against the plain copy of its
  downloads plus that merge;
- with `--prepare-pair`: the first build, which also writes the family's pair (4.3 GB of fp32), and a later
  build from the pair, against the same bare merge (no target: the pair is asked for, not the default);
- `merge` of fp16 safetensors A, B, C against its I/O floor (the longer of reading the inputs and writing and
  fsyncing a file of the output's size); target at most 1.15x.
Needs about 50 GB of disk under --dir (the served files, the cache, the outputs).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

A_REPO, C_REPO = "bench/sd1-inpainting", "bench/sd1-base"
RUNS = 5  # the bare merge alone varies by a third from run to run on this VM


class FileServer:
    """Files from disk by URL path, with Range, ETag and Content-Disposition; ``drop_after[path] = n`` closes the
    connection after n body bytes, once. ``requests`` keeps (path, range start, bytes sent)."""

    def __init__(self, routes: dict[str, Path]):
        self.routes, self.drop_after, self.requests = routes, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(urlsplit(self.path).path)
                file = server.routes.get(path)
                if file is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = file.stat().st_size
                start = 0
                wanted = self.headers.get("Range")
                if wanted:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size - start))
                self.send_header("ETag", f'"{file.stat().st_mtime_ns:x}"')
                self.send_header("Content-Disposition", f'attachment; filename="{file.name}"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                limit = server.drop_after.pop(path, None)
                end = size if limit is None else min(size, start + limit)
                sent = 0
                with open(file, "rb") as f:
                    offset = start
                    while offset < end:
                        n = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(end - offset, 8 << 20))
                        if n == 0:
                            break
                        offset += n
                        sent += n
                server.requests.append((path, start, sent))
                if limit is not None:
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # dropped on purpose
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def plain_copy(url: str, to: Path) -> float:
    """The naive download: stream to a file, nothing checked. Seconds."""
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(follow_redirects=True, timeout=60) as client, client.stream("GET", url) as r, \
            open(to, "wb") as f:  # fmt: skip
        r.raise_for_status()
        for chunk in r.iter_bytes(1 << 20):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def sha(path: Path) -> str:
    from merge import hashing

    return hashing.file_hashes(path).sha256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="where the inputs are made and kept (default: a temp dir)")
    ap.add_argument("--models", type=int, default=3, help="fine-tunes of the family to build")
    ap.add_argument("--parts", default="download,resume,builds,floor", help="which measurements to run")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-build-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        run(base, args.models, set(args.parts.split(",")))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


def run(base: Path, models: int, parts: set[str]) -> None:
    from benchmarks.bench_merge import generate

    t0 = time.perf_counter()
    a_path, c_path = base / "sd1-inpaint-fp32.ckpt", base / "sd1-base-fp32.safetensors"
    bs = [base / ("sd1-finetune.safetensors" if i == 0 else f"sd1-finetune-{i}.safetensors") for i in range(models)]
    for path, variant, seed, dtype in [(a_path, "inpaint", 1, "F32"), (c_path, "normal", 3, "F32"),
                                       *[(b, "normal", 2 + 10 * i, "F16") for i, b in enumerate(bs)]]:  # fmt: skip
        if not path.exists():
            generate(path, "sd1", variant, seed, dtype)
    hashes = {p: sha(p) for p in [a_path, c_path, *bs]}  # the registry's and the bundled data's records
    work = base / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name, value in {"INPAINT_ADVISOR_CACHE": work / "cache", "HF_HUB_CACHE": work / "hf-cache",
                        "INPAINT_ADVISOR_DB": work / "registry.db"}.items():  # fmt: skip
        os.environ[name] = str(value)
    print(f"{os.cpu_count()} CPUs; inputs under {base} (made or found in {time.perf_counter() - t0:.0f} s): A "
          f"{a_path.stat().st_size / 1e9:.2f} GB fp32 .ckpt, C {c_path.stat().st_size / 1e9:.2f} GB fp32, "
          f"{models} fine-tunes of {bs[0].stat().st_size / 1e9:.2f} GB fp16")
    routes = {f"/{A_REPO}/resolve/main/sd-v1-5-inpainting.ckpt": a_path,
              f"/{C_REPO}/resolve/main/v1-5-pruned-emaonly.safetensors": c_path}  # fmt: skip
    for i, b in enumerate(bs):
        routes[f"/blob/{700000 + i}"] = b
    files = FileServer(routes)
    urls = _registry(files, bs, hashes, a_path, c_path)
    scratch = work / "scratch"
    scratch.mkdir()
    if "download" in parts:
        _download(urls, a_path, hashes, scratch)
    if "resume" in parts:
        _resume(files, urls, bs[0], hashes, scratch)
    shutil.rmtree(scratch)
    if "builds" in parts:
        _builds(work, files, urls, a_path, c_path, bs)
    if "floor" in parts:
        _merge_floor(base, work, bs[0])


def _download(urls: dict, a_path: Path, hashes: dict, scratch: Path) -> None:
    """One download, ours against the plain copy of the same URL."""
    from advisor.build import Source, fetch

    plains, ours = [], []
    for _ in range(3):  # in turns, medians: a shared machine's disk drifts from one minute to the next
        os.sync()
        plains.append(plain_copy(urls["A"], scratch / "plain.ckpt"))
        (scratch / "plain.ckpt").unlink()
        os.sync()
        t = time.perf_counter()
        fetch(Source(urls["A"], name="a.ckpt", sha256=hashes[a_path], size=a_path.stat().st_size), scratch / "ours")
        ours.append(time.perf_counter() - t)
        shutil.rmtree(scratch / "ours")
    plain, mine = statistics.median(plains), statistics.median(ours)
    gb = a_path.stat().st_size / 1e9
    print(f"\ndownload of A ({gb:.2f} GB, medians of 3): plain copy {plain:.2f} s ({gb / plain:.2f} GB/s), fetch "
          f"(hashed, verified, fsync'd) {mine:.2f} s ({gb / mine:.2f} GB/s): {mine / plain:.2f}x; target <= 1.2x: "
          f"{'MET' if mine <= 1.2 * plain else 'NOT MET'}   (runs: plain {', '.join(f'{x:.1f}' for x in plains)}; "
          f"fetch {', '.join(f'{x:.1f}' for x in ours)} s)")


def _resume(files: FileServer, urls: dict, b: Path, hashes: dict, scratch: Path) -> None:
    """A resume after a dropped connection: what the second request fetches."""
    from advisor.build.download import CHUNK, Source, fetch

    route = "/blob/700000"
    size = b.stat().st_size
    files.drop_after[route] = size // 2
    files.requests.clear()
    fetch(Source(urls["B"][0], sha256=hashes[b], size=size), scratch / "resume", sleep=lambda s: None)
    got = [(start, sent) for path, start, sent in files.requests if path == route]
    (_, first_sent), (resume_at, refetched) = got[0], got[-1]
    missing = size - first_sent
    print(f"resume of B ({size / 1e9:.2f} GB) dropped after {first_sent / 1e9:.2f} GB: resumed at byte "
          f"{resume_at:,}, re-fetched {refetched:,} bytes for {missing:,} missing (+{refetched - missing:,}); "
          f"target <= missing + one chunk ({CHUNK:,}): {'MET' if refetched <= missing + CHUNK else 'NOT MET'}")


def _registry(files: FileServer, bs: list[Path], hashes: dict, a_path: Path, c_path: Path) -> dict:
    """A registry crawled from a fake Civitai listing the fine-tunes; the bundled data's SD 1.x pair pointed at
    the file server (as tests/test_build.py does)."""
    import copy

    from crawler import civitai, families, registry
    from crawler.http import RetryPolicy
    from tests.civitai_fake import FakeCivitai, Server, synthetic_item

    fake = FakeCivitai([])
    api = Server(fake)
    api_url = api.__enter__()
    os.environ["INPAINT_ADVISOR_CIVITAI_URL"] = api_url
    os.environ["HF_ENDPOINT"] = files.url
    items = []
    for i, b in enumerate(bs):
        item = synthetic_item(800001 + i, random.Random(i), datetime.datetime(2025, 1, 1))
        item["name"] = f"Bench Model {i}"
        item["modelVersions"] = item["modelVersions"][:1]
        v = item["modelVersions"][0]
        v["id"], v["baseModel"], v["baseModelType"] = 700000 + i, "SD 1.5", "Standard"
        f = v["files"][0]
        f["name"], f["sizeKB"], f["hashes"] = b.name, b.stat().st_size / 1024, {"SHA256": hashes[b]}
        v["files"] = [f]
        fake.downloads[str(v["id"])] = (f"{files.url}/blob/{v['id']}?sig=1", False)
        items.append(item)
    fake.items = items
    civitai.crawl(registry.open(os.environ["INPAINT_ADVISOR_DB"]), base_url=api_url,
                  policy=RetryPolicy(attempts=2))  # fmt: skip
    fams = copy.deepcopy(families.all_families())
    sd1 = next(f for f in fams if f["id"] == "sd1")
    sd1["inpaint"].update(mirrors=[{"repo": A_REPO, "alive": True}], file="sd-v1-5-inpainting.ckpt",
                          size=a_path.stat().st_size, sha256=hashes[a_path])  # fmt: skip
    sd1["base"].update(mirrors=[{"repo": C_REPO, "alive": True}], file="v1-5-pruned-emaonly.safetensors",
                       size=c_path.stat().st_size, sha256=hashes[c_path])  # fmt: skip
    families.all_families = lambda: fams
    families.by_id = lambda: {f["id"]: f for f in fams}
    return {"A": f"{files.url}/{A_REPO}/resolve/main/sd-v1-5-inpainting.ckpt",
            "C": f"{files.url}/{C_REPO}/resolve/main/v1-5-pruned-emaonly.safetensors",
            "B": [f"{api_url}/api/download/models/{700000 + i}" for i in range(len(bs))]}  # fmt: skip


def _builds(work: Path, files: FileServer, urls: dict, a_path: Path, c_path: Path, bs: list[Path]) -> None:
    """Each build as a user meets it (downloads included) against the naive way; then, with every input on disk
    and in the page cache (the downloads those builds made), the build alone against the bare three-input
    `merge` of the same files: the targets."""
    import merge.engine
    from advisor.build import build

    merges: list[float] = []
    real = merge.engine.run_merge

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            merges.append(time.perf_counter() - t)

    merge.engine.run_merge = timed
    out, naive_dir = work / "out", work / "naive"
    naive_dir.mkdir()
    db = Path(os.environ["INPAINT_ADVISOR_DB"])
    pristine = work / "registry-crawled.db"  # the registry before any build: a build redone is not "built before"
    shutil.copyfile(db, pristine)
    inputs: list[dict[str, str]] = []
    print(f"\nas a user meets them (downloads included){'':4}{'ours':>8}{'naive':>10}{'ratio':>8}")
    for i, b in enumerate(bs):
        copies = [urls["B"][i]] + ([urls["A"], urls["C"]] if i == 0 else [])
        copy_s = sum(plain_copy(u, naive_dir / "copy") for u in copies)
        (naive_dir / "copy").unlink()
        merge3 = _bare_merge(a_path, b, c_path, naive_dir)
        merges.clear()
        t = time.perf_counter()
        result = build(f"civitai:{800001 + i}", out=out)
        total = time.perf_counter() - t
        assert result.action == "built" and result.verified, result
        inputs.append({role: i.path for role, i in result.inputs.items()})
        what = "first build (fetches A, C, B)" if i == 0 else f"later build {i} (fetches B)"
        print(f"{what:44}{total:7.1f}s{copy_s + merge3:9.1f}s{total / (copy_s + merge3):7.2f}x   "
              f"(merges {' + '.join(f'{m:.1f}' for m in merges)} s; three-input merge {merge3:.1f} s)")
    merge.engine.run_merge = real

    def again(i: int, *, prepare_pair: bool = False, from_pair: bool = False, cold: bool = False) -> float:
        """Build ``i`` once more from its inputs on disk, its output and record gone, the inputs read into the
        page cache first, as the bare merge's are (``cold``: dropped from it instead, so that both read them
        from disk). The family's pair is removed first unless the build is to read it (``from_pair``)."""
        from merge import prepared

        shutil.copyfile(pristine, db)
        for p in out.glob("*.safetensors"):
            p.unlink()
        if not from_pair:
            shutil.rmtree(prepared.root(), ignore_errors=True)
        # A, B and C; a build from the pair reads B and the pair's delta
        warm = [inputs[i]["B"], *prepared.root().glob(f"*/{prepared.DELTA_FILE}")] if from_pair else \
            [inputs[i][r] for r in "ABC"]
        os.sync()  # no writeback of an earlier run's files in this one's time
        (_evict if cold else _read_all)([Path(p) for p in warm], bytearray(8 << 20))
        t = time.perf_counter()
        result = build(f"civitai:{800001 + i}", out=out, prepare_pair=prepare_pair)
        took = time.perf_counter() - t
        assert result.action == "built" and result.verified, result
        assert (result.pair is not None) == (prepare_pair or from_pair), result.pair
        return took

    def verdict(build_s: float, bare_s: float, target: float | None) -> str:
        ratio = f"{build_s:.1f} s against the bare three-input merge {bare_s:.1f} s: {build_s / bare_s:.2f}x"
        if target is None:
            return ratio
        return f"{ratio}; target <= {target}x: {'MET' if build_s <= target * bare_s else 'NOT MET'}"

    print(f"\ninputs on disk, medians of {RUNS} (runs: build, bare merge; the bare merge's hash cache knows A and C, "
          "not B: a new fine-tune)")
    for cold in (False, True):
        firsts = [(again(0, cold=cold), _bare_merge(a_path, bs[0], c_path, naive_dir, cold=cold))
                  for _ in range(RUNS)]  # fmt: skip
        first, bare0 = statistics.median(f for f, _ in firsts), statistics.median(m for _, m in firsts)
        how = "cold (read from disk)" if cold else "warm (in the page cache)"
        print(f"first build, start to recorded file, inputs {how}: {verdict(first, bare0, 1.5)}   ({_runs(firsts)})")
    later_models = [1 + k % (len(bs) - 1) for k in range(RUNS)] if len(bs) > 1 else []
    laters = [(again(i), _bare_merge(a_path, bs[i], c_path, naive_dir),
               _bare_merge(a_path, bs[i], c_path, naive_dir, b_hashed=True)) for i in later_models]  # fmt: skip
    if laters:
        later, bare = statistics.median(x[0] for x in laters), statistics.median(x[1] for x in laters)
        known = statistics.median(x[2] for x in laters)
        print(f"later build, start to recorded file: {verdict(later, bare, 1.1)}   ({_runs([x[:2] for x in laters])})"
              f"\n  (against a bare merge whose B is in the hash cache too, so that it hashes nothing: {known:.1f} s, "
              f"{later / known:.2f}x; the build hashes B as it merges, if it is new, and the output as it writes it)")
    print("\nwith --prepare-pair (the pair's fp32 delta, 4.3 GB, written in the first build's pass), medians of 3")
    pair_firsts = [(again(0, prepare_pair=True), _bare_merge(a_path, bs[0], c_path, naive_dir)) for _ in range(3)]
    first, bare0 = (statistics.median(x[k] for x in pair_firsts) for k in (0, 1))
    print(f"first build, preparing the pair, inputs warm: {verdict(first, bare0, None)}   ({_runs(pair_firsts)})")
    if later_models:
        from_pair = [(again(i, from_pair=True), _bare_merge(a_path, bs[i], c_path, naive_dir))
                     for i in later_models[:3]]  # fmt: skip
        later, bare = (statistics.median(x[k] for x in from_pair) for k in (0, 1))
        print(f"later build from the pair (reads D and B), inputs warm: {verdict(later, bare, None)}   "
              f"({_runs(from_pair)})")


def _runs(pairs: list[tuple[float, float]]) -> str:
    return "; ".join(f"{x:.1f}, {y:.1f}" for x, y in pairs)


def _bare_merge(a: Path, b: Path, c: Path, folder: Path, *, b_hashed: bool = False, cold: bool = False) -> float:
    """`merge` of A, B, C as a user runs it on files at hand, inputs read into the page cache first. Seconds.
    The hash cache knows A and C (the family's official files, merged before) and, unless ``b_hashed``, not B:
    a new fine-tune, whose SHA256 the merge computes for its recipe as it runs (as a build does)."""
    import merge.engine
    from merge import hashing

    known = {p: hashing.file_hashes(p, autov3=False) for p in (a, c, *([b] if b_hashed else []))}  # cached: no read
    cache, kept = folder / "hash-cache", {k: os.environ.get(k) for k in ("INPAINT_ADVISOR_CACHE", "XDG_CACHE_HOME")}
    shutil.rmtree(cache, ignore_errors=True)
    os.environ.update(INPAINT_ADVISOR_CACHE=str(cache), XDG_CACHE_HOME=str(cache / "xdg"))  # both cache folders
    try:
        for path, hashes in known.items():
            hashing.remember(path, hashes)
        os.sync()
        (_evict if cold else _read_all)([a, b, c], bytearray(8 << 20))
        t = time.perf_counter()
        merge.engine.merge(a, b, c, folder / "three.safetensors", force=True)
        took = time.perf_counter() - t
    finally:
        for name, value in kept.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    (folder / "three.safetensors").unlink()
    return took


def _evict(paths: list[Path], buf: bytearray | None = None) -> None:
    """Drop the files' pages from the page cache (clean ones: call os.sync first), so that they are read from
    disk again."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_all(paths: list[Path], buf: bytearray) -> None:
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


def _write_like(template: Path, to: Path) -> None:
    """A file of ``template``'s layout written the way the merge writes its output (SafetensorsWriter: a
    preallocated, mapped file flushed as it fills, fsync'd, renamed), each tensor's bytes copied from the
    template's mapping: the merge's own I/O with no arithmetic."""
    import mmap

    from merge.header import read_header
    from merge.safetensors_io import SafetensorsWriter

    header = read_header(template)
    layout = [(name, info.dtype, info.shape) for name, info in header.tensors.items()]
    with open(template, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as src:
        writer = SafetensorsWriter(to, layout, {})
        writer.start_populating()  # as the merge does
        mapping = writer.span(layout[0][0])[0]
        assert mapping is not None
        with memoryview(mapping) as out, memoryview(src) as given:
            for name, info in header.tensors.items():
                _, start, end = writer.span(name)
                out[start:end] = given[info.start : info.end]  # one copy; a header's offsets are absolute
                writer.done(name)
        writer.commit()


def _merge_floor(base: Path, work: Path, b: Path) -> None:
    """`merge` of fp16 safetensors A, B, C against its I/O floor on the same files: the longer of reading the
    three inputs and writing a file of the output's size the way the merge writes (fsync'd), with no arithmetic
    (what a merge that overlapped them perfectly would take). Both warm (the inputs in the page cache, as right
    after a download); in turns, medians of 3."""
    from benchmarks.bench_merge import generate
    from merge.engine import merge

    a16, c16 = base / "sd1-inpaint-fp16.safetensors", base / "sd1-base-fp16.safetensors"
    for path, variant, seed in [(a16, "inpaint", 1), (c16, "normal", 3)]:
        if not path.exists():
            generate(path, "sd1", variant, seed, "F16")
    out, floor_out = work / "floor-merge.safetensors", work / "floor-io.bin"
    buf = bytearray(8 << 20)
    _read_all([a16, b, c16], buf)  # warm
    merges, floors = [], []
    for _ in range(3):
        out.unlink(missing_ok=True)
        os.sync()
        t = time.perf_counter()
        result = merge(a16, b, c16, out, dtype="fp16")
        merges.append(time.perf_counter() - t)
        os.sync()
        t = time.perf_counter()
        _read_all([a16, b, c16], buf)
        read = time.perf_counter() - t
        t = time.perf_counter()
        _write_like(b, floor_out)
        # the floor: the reads and the writes, were they perfectly overlapped (a merge needs both)
        floors.append(max(read, time.perf_counter() - t))
        floor_out.unlink()
    out.unlink(missing_ok=True)
    m, f = statistics.median(merges), statistics.median(floors)
    gb = sum(p.stat().st_size for p in (a16, b, c16)) / 1e9
    print(f"\nmerge of fp16 safetensors ({gb:.1f} GB in, {result.bytes_written / 1e9:.1f} GB out, fsync'd; in process, "
          f"medians of 3) {m:.2f} s against its I/O floor (the longer of reading the inputs and writing the "
          f"output's size as the merge writes, fsync'd) {f:.2f} s: {m / f:.2f}x; target <= 1.15x: "
          f"{'MET' if m <= 1.15 * f else 'NOT MET'}   (runs: merge {', '.join(f'{x:.1f}' for x in merges)}; "
          f"floor {', '.join(f'{x:.1f}' for x in floors)} s)")


if __name__ == "__main__":
    main()
