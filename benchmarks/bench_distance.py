#!/usr/bin/env python3
"""A fine-tune's distance from its base (merge/distance.py), as `lookup ./file` and `scan` measure it when the
base file is at hand: the sampled measure (16 MB of each file) against the naive one (every UNet tensor of both
files), on two full-size SD 1.5 fp16 checkpoints (random values, B = C moved by a known drift), both cold (the
files dropped from the page cache before each run) and warm.

    python benchmarks/bench_distance.py [--dir DIR] [--drift 0.05]

Prints the time of each and the distance each finds: the sample must land within a few percent of the whole.
Target: the sampled measure adds under 0.5 s to a cold `lookup ./file` on a 2-core machine with an SSD.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_pair(folder: Path, drift: float) -> tuple[Path, Path]:
    import json
    import struct

    from tests.sd_layouts import checkpoint_shapes

    shapes = checkpoint_shapes("sd1", "normal", scale=1)
    header, offset = {}, 0
    for name, shape in shapes.items():
        if shape and isinstance(shape[0], str):
            continue  # position ids: no weights
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    c_path, b_path = folder / "base.safetensors", folder / "fine_tune.safetensors"
    with open(c_path, "wb") as c, open(b_path, "wb") as b:
        for f in (c, b):
            f.write(struct.pack("<Q", len(raw)) + raw)
        for name, entry in header.items():
            count = int(np.prod(entry["shape"]))
            base = (rng.standard_normal(count, dtype=np.float32) * 0.05).astype(np.float16)
            c.write(base.tobytes())
            moved = base.astype(np.float32)
            if name.startswith("model.diffusion_model."):
                noise = rng.standard_normal(count, dtype=np.float32)
                moved += noise * (drift * np.linalg.norm(moved) / max(float(np.linalg.norm(noise)), 1e-12))
            b.write(moved.astype(np.float16).tobytes())
    return b_path, c_path


def drop_cache(*paths: Path) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def naive(b_path: Path, c_path: Path) -> float:
    """Every UNet tensor of both files, read whole."""
    from merge.distance import base_distance

    return base_distance(b_path, c_path, budget=2**40).relative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="where to write the two 2 GB files (default: a temporary folder)")
    ap.add_argument("--drift", type=float, default=0.05)
    args = ap.parse_args()
    from merge.distance import base_distance

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        b, c = make_pair(Path(tmp), args.drift)
        print(f"made two {b.stat().st_size / 1e9:.2f} GB SD 1.5 fp16 files in {time.perf_counter() - t:.1f} s "
              f"(B = C moved by {args.drift:.1%})")  # fmt: skip
        for label, measure in (("sampled (16 MB of each)", lambda: base_distance(b, c).relative),
                               ("naive (every UNet tensor)", lambda: naive(b, c))):  # fmt: skip
            for state in ("cold", "warm"):
                if state == "cold":
                    drop_cache(b, c)
                t = time.perf_counter()
                value = measure()
                print(f"{label:28} {state}: {time.perf_counter() - t:6.2f} s   distance {value:.2%}")


if __name__ == "__main__":
    main()
