#!/usr/bin/env python3
"""Crawl a locally served synthetic Civitai catalogue and report models/s, peak memory and registry growth, on
SQLite and, with --db, on PostgreSQL too.

    python benchmarks/bench_crawl.py [--models 20000] [--naive-models 2000] [--db postgresql+psycopg://u@host/db]

The server runs in its own process with every page pre-rendered, so the figures are the crawler's own cost
(HTTP, JSON, detection, the database) as against a remote server. In the same run, a naive crawler (one ORM
``session.merge`` per row, no prefetch) crawls the first pages for comparison. --db names a PostgreSQL server:
the crawl goes into a scratch database created next to the one named (which is not touched), dropped at the
end. Targets (issues #2, #12): >= 1,000 models/s end to end on a 2-core machine on both engines, registry
growth linear in models.
"""

import argparse
import contextlib
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

    from crawler import registry
    from crawler.civitai.items import parse_model
    from crawler.registry.schema import File, Model, Version

    reg = registry.open(db)
    seen, cursor = 0, None
    with httpx.Client(base_url=url) as client, Session(reg.engine) as session:
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


def logical_size(reg) -> int:
    """The committed database's size: on SQLite its pages (WAL included, not double-counted), on PostgreSQL
    pg_database_size."""
    from sqlalchemy import text

    with reg.engine.connect() as conn:
        if reg.engine.dialect.name == "sqlite":
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            return pages * conn.exec_driver_sql("PRAGMA page_size").scalar()
        return conn.execute(text("SELECT pg_database_size(current_database())")).scalar()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20_000)
    ap.add_argument("--naive-models", type=int, default=2_000)
    ap.add_argument("--db", help="a PostgreSQL server (any database URL on it) to crawl into beside SQLite")
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

    from crawler import civitai, registry

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        targets = [("SQLite", str(Path(tmp) / "bench.db"), str(Path(tmp) / "naive.db"))]
        if args.db:
            from tests.pg import fresh_database

            fresh = [stack.enter_context(fresh_database(args.db, "inpaint_advisor_bench")) for _ in range(2)]
            targets.append(("PostgreSQL", *fresh))
        verdicts = []
        for label, db, naive_db in targets:
            reg = registry.open(db)
            growth: list[tuple[int, int]] = []
            marks = {args.models // 4, args.models // 2, 3 * args.models // 4}

            def on_page(s, reg=reg, growth=growth, marks=marks):
                if any(s.models - 100 < m <= s.models for m in marks):
                    growth.append((s.models, logical_size(reg)))

            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            summary = civitai.crawl(reg, base_url=url, on_page=on_page)
            elapsed = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            growth.append((summary.models, logical_size(reg)))
            reg.engine.dispose()
            rate = summary.models / elapsed
            print(f"\n{label}: inpaint-advisor crawl: {summary.models:,} models ({summary.pages} pages) in "
                  f"{elapsed:.2f}s = {rate:,.0f} models/s; peak RSS {peak / 1024:.0f} MiB (before crawl "
                  f"{rss_before / 1024:.0f} MiB)")  # fmt: skip
            print("registry growth (models served -> database size, bytes per model):")
            for n, b in growth:
                print(f"  {n:>7,} -> {b / 2**20:7.1f} MiB  {b / n:7.0f} B/model")
            t0 = time.perf_counter()
            seen = naive_crawl(url, naive_db, args.naive_models)
            naive_rate = seen / (time.perf_counter() - t0)
            print(f"naive ORM-merge crawl: {seen:,} models in {seen / naive_rate:.2f}s = {naive_rate:,.0f} models/s")
            verdicts.append(f"{label} {rate:,.0f} models/s ({rate / naive_rate:.1f}x naive): "
                            f"{'MET' if rate >= 1000 else 'NOT MET'}")  # fmt: skip
        print("\ntarget >= 1,000 models/s: " + "; ".join(verdicts))
    parent.send("stop")
    proc.join(10)


if __name__ == "__main__":
    os.environ.setdefault("INPAINT_ADVISOR_DB", "/dev/null/unused")
    main()
