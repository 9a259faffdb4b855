#!/usr/bin/env python3
"""Which Civitai versions a crawl's header proofs read (crawler/civitai/proof.py ``wanted_versions``): the
registry's SQL pre-filter (inpainting hints, no family, family words that contradict the family) paged, the
exact rules applied to what it returns, against the naive way (every version of the registry paged and each
judged in Python), on a generated registry (benchmarks/bench_lookup.py's: names of random words, family words
among them, on random base models: the worst case for the family-word filter). Both must pick the same versions.

    python benchmarks/bench_proofs.py [--models 200000] [--most 800]

--most is how many versions a crawl asks for: its header-read budget (200) times its attempts (4).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def naive(reg, most: int) -> tuple[list[dict], int]:
    """Every version paged (a pre-filter that lets everything through), each judged by the same rules."""
    from crawler import families
    from crawler.civitai import proof

    everything = [("%", [f["id"] for f in families.all_families()])]
    wanted, offset = [], 0
    with reg.snapshot() as tx:
        while len(wanted) < most and (batch := tx.pending_proofs(proof.PENDING_BATCH, offset, everything)):
            offset += len(batch)
            wanted += [row for row in batch if proof._wants_proof(row)]
    return wanted, offset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=200_000)
    ap.add_argument("--most", type=int, default=800)
    args = ap.parse_args()
    import benchmarks.bench_lookup as generated
    from benchmarks.bench_lookup import build_registry
    from crawler import registry
    from crawler.civitai.proof import wanted_versions

    worlds = [("names of random words, family words among them (the worst case)", generated.WORDS),
              ("no family word in any name (1 model in 40 with an inpainting release)",
               [w for w in generated.WORDS if w not in ("pony", "flux", "xl")])]  # fmt: skip
    failed = False
    for label, words in worlds:
        generated.WORDS = words
        with tempfile.TemporaryDirectory() as tmp:
            db = str(Path(tmp) / "registry.db")
            t = time.perf_counter()
            build_registry(db, args.models)
            print(f"{label}: {args.models:,} models generated in {time.perf_counter() - t:.1f} s (SQLite)")
            reg = registry.open(db)
            t = time.perf_counter()
            picked = wanted_versions(reg, args.most)
            filtered = time.perf_counter() - t
            t = time.perf_counter()
            slow, paged = naive(reg, args.most)
            every = time.perf_counter() - t
            n = min(len(picked), len(slow))
            same = [r["id"] for r in picked][:n] == [r["id"] for r in slow][:n]
            print(f"  pre-filtered (the crawl's way): {len(picked):,} versions to read in {filtered:.2f} s")
            print(f"  naive (every version judged):   {len(slow):,} versions to read in {every:.2f} s, {paged:,} rows "
                  f"paged ({every / max(filtered, 1e-9):.1f}x)")  # fmt: skip
            print("  the same versions, in the same order: " + ("yes" if same else "NO"))
            failed |= not same
            reg.engine.dispose()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
