#!/usr/bin/env python3
"""Cold `inpaint-advisor lookup` on a generated registry of 200,000 models: wall time of the whole command
(interpreter start, imports, query, answer), for several kinds of query, against the naive approach (load
every name and score it in a Python loop) in the same run.

    python benchmarks/bench_lookup.py [--models 200000] [--runs 5]

Target (issue #4): under 0.5 s wall on a 2-core machine.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ["real", "vision", "dream", "shaper", "anime", "mix", "photon", "cyber", "juggernaut", "epic", "majic",
         "toon", "noob", "pony", "flux", "aether", "velvet", "zavy", "chroma", "analog", "deli", "beauty", "art",
         "style", "ultra", "hyper", "neo", "retro", "pixel", "dark", "light", "soft", "magic", "fantasy",
         "xl"]  # fmt: skip
BASES = ["SD 1.5", "SDXL 1.0", "Pony", "Illustrious", "Flux.1 D", "SD 2.1", "NoobAI"]


def build_registry(path: Path, n: int) -> None:
    """Rows written straight through the project's upsert (the crawler's own write path), 1 version and 1
    file per model; a few models get an inpainting version."""
    from crawler import db
    from crawler.families import family_for_base_model
    from crawler.names import normalize_name
    from crawler.schema import File, InpaintLink, Model, Version
    from crawler.store import upsert

    engine = db.get_engine(path)
    rng = random.Random(1)
    batch = 5000
    for start in range(0, n, batch):
        models, versions, files, links = [], [], [], []
        for i in range(start, min(n, start + batch)):
            name = " ".join(rng.choice(WORDS).title() for _ in range(rng.randint(2, 3))) + f" {i}"
            base = rng.choice(BASES)
            mid, vid = f"civitai:{i}", f"civitai:v{i}"
            inp = i % 40 == 0
            models.append({"id": mid, "source": "civitai", "source_id": str(i), "name": name,
                           "name_norm": normalize_name(name), "type": "Checkpoint", "creator": f"user{i % 5000}",
                           "tags": "[]", "nsfw": False, "mode": None, "base_model": base,
                           "family": family_for_base_model(base), "is_inpainting": False, "has_inpainting": inp,
                           "updated_at": None, "content_hash": ""})  # fmt: skip
            for k, is_inp in enumerate([False, True] if inp else [False]):
                v = f"{vid}{'i' if is_inp else ''}"
                versions.append({"id": v, "model_id": mid, "source_id": v, "name": "v1" + ("-inpainting" if is_inp
                                 else ""), "base_model": base, "base_model_type": "Standard",
                                 "family": family_for_base_model(base), "published_at": None, "updated_at": None,
                                 "position": k, "is_inpainting": is_inp, "inpaint_confidence": 0.9 if is_inp else 0,
                                 "inpaint_evidence": "[]", "download_url": None})  # fmt: skip
                sha = f"{rng.getrandbits(256):064X}"
                files.append({"id": f"f{v}", "version_id": v, "name": f"{name.replace(' ', '')}.safetensors",
                              "size_kb": 2e6, "type": "Model", "format": "SafeTensor", "fp": "fp16", "primary": True,
                              "sha256": sha, "autov1": sha[:8], "autov2": sha[:10], "autov3": sha[10:22],
                              "crc32": None, "blake3": None, "download_url": None})  # fmt: skip
                if is_inp:
                    links.append({"id": f"{v}>{mid}", "inpaint_version_id": v, "inpaint_model_id": mid,
                                  "parent_model_id": mid, "parent_version_id": vid, "kind": "same-model",
                                  "confidence": 0.9, "evidence": "[]"})  # fmt: skip
        with engine.begin() as conn:
            upsert(conn, Model.__table__, models)
            upsert(conn, Version.__table__, versions)
            upsert(conn, File.__table__, files)
            upsert(conn, InpaintLink.__table__, links)
    engine.dispose()


NAIVE = r"""
import sqlite3, sys
from rapidfuzz import fuzz
from crawler.names import normalize_name
conn = sqlite3.connect(sys.argv[1])
wanted = normalize_name(sys.argv[2])
best = max(conn.execute("SELECT id, name_norm FROM model"), key=lambda r: fuzz.WRatio(wanted, r[1]))
print(best)
"""


def timed(cmd: list[str], env: dict, runs: int) -> tuple[float, int]:
    walls, rc = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=env, capture_output=True).returncode
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="build the registry here and keep it (reused when present)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "registry.db"
        t0 = time.perf_counter()
        if not path.exists():
            build_registry(path, args.models)
        print(f"registry: {args.models:,} models, {path.stat().st_size / 2**20:.0f} MiB, built in "
              f"{time.perf_counter() - t0:.0f}s")  # fmt: skip
        env = {**os.environ, "INPAINT_ADVISOR_DB": str(path), "PYTHONPATH": str(ROOT)}
        exe = [sys.executable, "-m", "advisor", "lookup", "--offline"]
        import sqlite3

        conn = sqlite3.connect(path)
        name = conn.execute("SELECT name FROM model WHERE rowid = 123457").fetchone()[0]
        other = conn.execute("SELECT name FROM model WHERE rowid = 4243").fetchone()[0]
        typo = name[:3] + name[4:]  # one letter dropped
        queries = {"free text with a typo": typo, "exact name": name,
                   "Civitai URL": "https://civitai.com/models/123456?modelVersionId=123456",
                   "AutoV2 hash": conn.execute("SELECT autov2 FROM file LIMIT 1 OFFSET 99999").fetchone()[0],
                   "--json": other.lower()}  # fmt: skip
        conn.close()
        print("queries: " + "; ".join(f"{k} = {v!r}" for k, v in queries.items()))
        worst = 0.0
        print(f"\ncold `inpaint-advisor lookup` (median of {args.runs} runs, whole process):")
        for label, q in queries.items():
            cmd = exe + ([q, "--json"] if label == "--json" else [q])
            wall, rc = timed(cmd, env, args.runs)
            worst = max(worst, wall)
            print(f"  {label:<24} {wall * 1000:7.0f} ms   exit {rc}")
        baseline, _ = timed([sys.executable, "-c", "pass"], env, args.runs)
        print(f"  (python startup alone    {baseline * 1000:7.0f} ms)")
        naive, _ = timed([sys.executable, "-c", NAIVE, str(path), typo], env, args.runs)
        print(f"naive: load all names and score each in a Python loop: {naive * 1000:.0f} ms "
              f"({naive / worst:.1f}x the slowest lookup)")  # fmt: skip
        print(f"target < 500 ms: {'MET' if worst < 0.5 else 'NOT MET'} (slowest {worst * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
