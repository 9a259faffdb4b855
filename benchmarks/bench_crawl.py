#!/usr/bin/env python3
"""Crawl a locally served synthetic Civitai catalogue and report models/s, peak memory and registry growth.

    python benchmarks/bench_crawl.py [--models 20000] [--naive-models 2000]

The server runs in its own process with every page pre-rendered, so the figures are the crawler's own cost
(HTTP, JSON, detection, SQLite) as against a remote server. In the same run, a naive crawler (one ORM
``session.merge`` per row, no prefetch) crawls the first pages for comparison. Target (issue #2): >= 1,000
models/s end to end on a 2-core machine, registry growth linear in models.
"""

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def serve(n: int, ready) -> None:
    import httpx

    from tests.civitai_fake import FakeCivitai, Server, synthetic_catalogue

    fake = FakeCivitai(synthetic_catalogue(n))
    server = Server(fake)
    url = server.__enter__()
    cursor = None
    with httpx.Client(base_url=url) as client:  # pre-render every page
        while True:
            params = {"types": "Checkpoint", "nsfw": "true", "limit": "100", "sort": "Oldest"}
            body = client.get("/api/v1/models", params=params | ({"cursor": cursor} if cursor else {})).json()
            cursor = body["metadata"].get("nextCursor")
            if not cursor:
                break
    ready.send(url)
    ready.recv()  # until told to stop
    server.__exit__(None, None, None)


def _datetimes(row: dict) -> dict:
    """The ORM wants datetime objects where the fast path hands the stored text over."""
    from datetime import UTC, datetime

    return {k: datetime.fromisoformat(v).replace(tzinfo=UTC) if k.endswith("_at") and isinstance(v, str) else v
            for k, v in row.items()}  # fmt: skip


def naive_crawl(url: str, db: str, max_models: int) -> int:
    """What a first attempt looks like: ORM objects merged one by one, a page at a time, no prefetch."""
    import httpx
    from sqlmodel import Session

    from crawler import db as registry
    from crawler.civitai import parse_model
    from crawler.schema import File, Model, Version

    engine = registry.get_engine(db)
    seen, cursor = 0, None
    with httpx.Client(base_url=url) as client, Session(engine) as session:
        while seen < max_models:
            params = {"types": "Checkpoint", "nsfw": "true", "limit": "100", "sort": "Oldest"}
            body = client.get("/api/v1/models", params=params | ({"cursor": cursor} if cursor else {})).json()
            for item in body["items"]:
                p = parse_model(item)
                session.merge(Model(**_datetimes(p.model)))
                for v in p.versions:
                    session.merge(Version(**_datetimes(v)))
                for f in p.files:
                    session.merge(File(**f))
            session.commit()
            seen += len(body["items"])
            cursor = body["metadata"].get("nextCursor")
            if not cursor:
                break
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20_000)
    ap.add_argument("--naive-models", type=int, default=2_000)
    args = ap.parse_args()

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(args.models, child), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    url = parent.recv()
    print(
        f"catalogue: {args.models:,} models (2 versions, 3 files, 4 images each), served at {url} "
        f"(ready in {time.perf_counter() - t0:.1f}s)"
    )

    from crawler import civitai
    from crawler import db as registry

    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        engine = registry.get_engine(db_path)
        growth: list[tuple[int, int]] = []
        marks = {args.models // 4, args.models // 2, 3 * args.models // 4}

        def logical_size() -> int:
            """The committed database's size, WAL included but not double-counted."""
            import sqlite3

            conn = sqlite3.connect(db_path)
            try:
                return conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
            finally:
                conn.close()

        def on_page(s):
            if any(s.models - 100 < m <= s.models for m in marks):
                growth.append((s.models, logical_size()))

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        summary = civitai.crawl(engine, base_url=url, on_page=on_page)
        elapsed = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        growth.append((summary.models, logical_size()))
        engine.dispose()
        rate = summary.models / elapsed
        print(
            f"\ninpaint-advisor crawl: {summary.models:,} models ({summary.pages} pages) in {elapsed:.2f}s "
            f"= {rate:,.0f} models/s; peak RSS {peak / 1024:.0f} MiB (before crawl {rss_before / 1024:.0f} MiB)"
        )
        print("registry growth (models served -> database size, bytes per model):")
        for n, b in growth:
            print(f"  {n:>7,} -> {b / 2**20:7.1f} MiB  {b / n:7.0f} B/model")

        naive_db = str(Path(tmp) / "naive.db")
        t0 = time.perf_counter()
        seen = naive_crawl(url, naive_db, args.naive_models)
        naive_elapsed = time.perf_counter() - t0
        naive_rate = seen / naive_elapsed
        print(f"naive ORM-merge crawl: {seen:,} models in {naive_elapsed:.2f}s = {naive_rate:,.0f} models/s")
        print(
            f"\nspeed-up over naive: {rate / naive_rate:.1f}x; target >= 1,000 models/s: "
            f"{'MET' if rate >= 1000 else 'NOT MET'}"
        )
    parent.send("stop")
    proc.join(10)


if __name__ == "__main__":
    os.environ.setdefault("INPAINT_ADVISOR_DB", "/dev/null/unused")
    main()
