#!/usr/bin/env python3
"""Merge full-size SD1.5 and SDXL checkpoints (real key layouts and shapes, random values) with
`merge.engine` and, in the same run, with the naive whole-file approach (load three state dicts, compute,
save), each in its own process; print wall time, peak RSS and peak anonymous memory of each, and the ratios.

    python benchmarks/bench_merge.py [--families sd1,sdxl] [--naive-sdxl] [--dir DIR] [--device cpu|cuda] [--cold]
                                     [--official]

Targets (issue #3), 2 cores / 24 GB: SD1.5 at most 0.35x the naive wall time with peak anonymous memory under
1 GB; SDXL under 1.5 GB. The naive SDXL merge needs about 20 GB and is only run with --naive-sdxl.
With --official the inputs are in the formats the official files are published in: A an fp32 zip-pickle
`.ckpt` with a nested `state_dict` (as sd-v1-5-inpainting.ckpt), C an fp32 safetensors file, B fp16 (issue #13:
at most 0.4x the naive merge, peak anonymous memory under 1 GB).
Input hashes for the output metadata are cached by path+size+mtime (as after `probe --hash`); the cold
hashing cost is printed separately. Every run starts with the inputs in the page cache (or, with --cold, evicted
from it, as after a reboot: then the disk's read speed bounds both approaches). The naive approach
is timed like for like both ways: the merge by default (fsync before OUT appears, bound by the disk's write
speed) against the naive approach followed by an fsync of its output, and the merge with --no-sync against the
naive approach up to the end of its save (the same run, less its timed fsync).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAIVE = r"""
import sys, torch
from safetensors.torch import load_file, save_file
def load(p):
    if p.endswith(".ckpt"):
        sd = torch.load(p, map_location="cpu", weights_only=True)
        return sd.get("state_dict", sd)
    return load_file(p)
a, b, c = (load(p) for p in sys.argv[1:4])
out = {}
for k, t in a.items():
    if t.is_floating_point() and k in b and k in c:
        if t.shape == b[k].shape:
            out[k] = (t.float() + (b[k].float() - c[k].float())).half()
            continue
        if t.dim() == 4 and t.shape[1] > b[k].shape[1]:
            x = t.float()
            x[:, : b[k].shape[1]] += b[k].float() - c[k].float()
            out[k] = x.half()
            continue
    out[k] = t.half() if t.is_floating_point() else t
save_file(out, sys.argv[4])
import os, time
t = time.perf_counter()
fd = os.open(sys.argv[4], os.O_RDONLY)
os.fsync(fd)
print(time.perf_counter() - t)
"""


NAIVE_SYNC = "naive whole-file merge + fsync   "
NAIVE_NO_SYNC = "naive whole-file merge (no fsync)"


def naive_without_fsync(m: dict) -> dict:
    try:
        fsync_s = float(m["printed"].strip().splitlines()[-1])
    except (ValueError, IndexError):  # a failed run printed nothing: keep its wall, marked failed
        return {**m, "failed": True}
    return {**m, "wall": m["wall"] - fsync_s}


def warm(paths: list[Path]) -> None:
    """Read the inputs once so every run starts with them in the page cache (the same start for all)."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(bytearray(64 * 2**20)):
                pass


def evict(paths: list[Path]) -> None:
    """Drop the inputs from the page cache (clean pages of files nobody maps), so every run reads the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def generate(path: Path, family: str, variant: str, seed: int, dtype: str = "F16") -> None:
    """A full-size checkpoint written tensor by tensor from a random pool (fast, bounded memory); a ``.ckpt``
    path gets torch.save's zip format with a nested state_dict, built in memory."""
    import torch

    if path.suffix == ".ckpt":
        staged = path.with_suffix(".staged.safetensors")
        generate(staged, family, variant, seed, dtype)
        from safetensors.torch import load_file

        torch.save({"state_dict": load_file(staged), "global_step": 470000}, path)
        staged.unlink()
        return

    from merge.safetensors_io import SafetensorsWriter
    from tests.sd_layouts import checkpoint_shapes

    shapes = checkpoint_shapes(family, variant, scale=1)
    g = torch.Generator().manual_seed(seed)
    pool = (torch.randn(1 << 25, generator=g) * 0.05).half()  # 64 MiB of fp16 noise
    layout = [(k, "I64", s[1]) if s and s[0] == "int64" else (k, dtype, s) for k, s in shapes.items()]
    w = SafetensorsWriter(path, layout, {})
    try:
        for k, dtype, shape in layout:
            n = 1
            for d in shape:
                n *= d
            if dtype == "I64":
                w.write(k, torch.arange(n, dtype=torch.int64).reshape(shape))
                continue
            start = int(torch.randint(0, pool.numel(), (1,), generator=g))
            idx = (torch.arange(n) + start) % pool.numel() if n > pool.numel() - start else slice(start, start + n)
            w.write(k, pool[idx].reshape(shape).to(torch.float32 if dtype == "F32" else torch.float16))
        w.commit()
    except BaseException:
        w.abort()
        raise


def measure(cmd: list[str], env: dict, inputs: list[Path], cold: bool) -> dict:
    """Run a child and sample its anonymous RSS every 10 ms (ru_maxrss also counts file-backed pages).
    Dirty pages of earlier runs are written back first so that each run pays only for its own writes."""
    os.sync()
    if cold:
        evict(inputs)
    else:
        warm(inputs)
    with tempfile.TemporaryFile() as printed:
        return _measure_run(cmd, env, printed)


def _measure_run(cmd: list[str], env: dict, printed) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=printed)
    peak = {"anon": 0}
    done = threading.Event()  # not proc.poll(): it could reap the child before os.wait4 collects its usage

    def sample():
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak["anon"] = max(peak["anon"], int(line.split()[1]) * 1024)
            except OSError:
                break
            done.wait(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    done.set()
    t.join()
    printed.seek(0)
    failed = os.waitstatus_to_exitcode(status) != 0
    return {"wall": elapsed, "rss": usage.ru_maxrss * 1024, "anon": peak["anon"], "failed": failed,
            "printed": printed.read().decode(errors="replace")}  # fmt: skip


def fmt(m: dict) -> str:
    state = " (FAILED)" if m["failed"] else ""
    return f"{m['wall']:7.2f} s   peak RSS {m['rss'] / 2**30:6.2f} GiB   peak anon {m['anon'] / 2**30:6.2f} GiB{state}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="sd1,sdxl")
    ap.add_argument("--naive-sdxl", action="store_true", help="also run the naive SDXL merge (~20 GB)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the inputs (default: a temp dir)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each approach, in turns (median reported)")
    ap.add_argument("--cold", action="store_true", help="evict the inputs from the page cache before each run")
    ap.add_argument("--official", action="store_true", help="A as an fp32 .ckpt, C fp32, as the official files are")
    args = ap.parse_args()
    base_dir = args.dir or Path(tempfile.mkdtemp(prefix="bench-merge-"))
    base_dir.mkdir(parents=True, exist_ok=True)
    try:
        run_families(args, base_dir)
    finally:
        if args.dir is None:  # generated inputs are 6-21 GB: keep them only where asked (--dir)
            shutil.rmtree(base_dir, ignore_errors=True)


def run_families(args: argparse.Namespace, base_dir: Path) -> None:
    from merge import fused, hashing

    env = {**os.environ, "PYTHONPATH": str(ROOT), "INPAINT_ADVISOR_CACHE": str(base_dir / "cache")}
    os.environ["INPAINT_ADVISOR_CACHE"] = env["INPAINT_ADVISOR_CACHE"]
    print(f"{os.cpu_count()} CPUs; inputs under {base_dir}; page cache {'cold' if args.cold else 'warm'}")
    arithmetic = "C kernel (merge._fused)" if fused.kernel() else "torch ops (merge._fused not built or switched off)"
    print(f"CPU arithmetic: {arithmetic}")
    for family in args.families.split(","):
        paths = [base_dir / f"{family}-{n}.safetensors" for n in ("inpaint", "finetune", "base")]
        dtypes = ["F16"] * 3
        if args.official:
            paths = [base_dir / f"{family}-inpaint-fp32.ckpt", paths[1], base_dir / f"{family}-base-fp32.safetensors"]
            dtypes = ["F32", "F16", "F32"]
        t0 = time.perf_counter()
        for p, variant, seed, dtype in zip(paths, ("inpaint", "normal", "normal"), (1, 2, 3), dtypes, strict=True):
            if not p.exists():
                generate(p, family, variant, seed, dtype)
        size = sum(p.stat().st_size for p in paths)
        print(f"\n== {family}: 3 inputs, {size / 1e9:.2f} GB (generated in {time.perf_counter() - t0:.0f}s)")
        t0 = time.perf_counter()
        for p in paths:
            hashing.file_hashes(p)
        print(f"cold sha256 of the inputs (once, then cached): {time.perf_counter() - t0:.2f} s")
        out = base_dir / f"{family}-out.safetensors"
        # The command users run, start to exit (interpreter, imports, checks, merge, rename).
        cli = [sys.executable, "-m", "advisor", "merge", "--inpaint", str(paths[0]), "--model", str(paths[1]),
               "--base", str(paths[2]), "--out", str(out), "--force", "--device", args.device, "--json"]  # fmt: skip
        runs = {
            "inpaint-advisor merge (fsync'd)  ": [*cli, "--sync"],
            "inpaint-advisor merge --no-sync  ": [*cli, "--no-sync"],
        }
        if family != "sdxl" or args.naive_sdxl:
            runs[NAIVE_SYNC] = [sys.executable, "-c", NAIVE, *map(str, paths), str(out)]
        # Shared machines drift by tens of percent from one minute to the next: the approaches take turns, and
        # each figure is the median of --repeat runs.
        results: dict[str, list[dict]] = {k: [] for k in runs}
        for _ in range(args.repeat):
            for label, cmd in runs.items():
                results[label].append(measure(cmd, env, paths, args.cold))
                out.unlink(missing_ok=True)
        if NAIVE_SYNC in results:  # the naive run up to the end of its save: its wall less its timed fsync
            results[NAIVE_NO_SYNC] = [naive_without_fsync(m) for m in results[NAIVE_SYNC]]
        med = {}
        for label, ms in results.items():
            walls = sorted(m["wall"] for m in ms)
            med[label] = {**max(ms, key=lambda m: m["anon"]), "wall": statistics.median(walls)}
            spread = f"   runs {', '.join(f'{w:.1f}' for w in walls)} s" if len(walls) > 1 else ""
            print(f"{label}  {fmt(med[label])}{spread}")
        ours, fast = med["inpaint-advisor merge (fsync'd)  "], med["inpaint-advisor merge --no-sync  "]
        naive, naive_fast = med.get(NAIVE_SYNC), med.get(NAIVE_NO_SYNC)
        if naive and naive_fast:
            synced, unsynced = ours["wall"] / naive["wall"], fast["wall"] / naive_fast["wall"]
            print(
                f"ratio ours/naive wall (medians, like for like): {synced:.2f}x both fsync'd, "
                f"{unsynced:.2f}x neither syncs; peak anon {ours['anon'] / max(naive['anon'], 1):.3f}x"
            )
            print(
                f"target wall <= 0.35x naive: {'MET' if synced <= 0.35 else 'NOT MET'} (fsync'd), "
                f"{'MET' if unsynced <= 0.35 else 'NOT MET'} (neither syncs)"
            )
        else:
            print("naive whole-file merge  skipped (needs ~20 GB: pass --naive-sdxl)")
        if args.official and naive:
            print(f"target (#13, official formats) wall <= 0.4x naive: {'MET' if synced <= 0.4 else 'NOT MET'}")
        limit = {"sd1": 1.0, "sdxl": 1.5}.get(family)
        if limit:
            print(f"target peak anon < {limit} GiB: {'MET' if ours['anon'] < limit * 2**30 else 'NOT MET'}")


if __name__ == "__main__":
    main()
