"""Team mode: builds queued in the shared PostgreSQL registry and run by workers on any host.

A build job carries what makes the build itself (the query, A, C, M, precision); where the output goes is the
worker's choice (its ``out``, typically shared storage), and downloads go to that host's cache, so a job
retried on another host after its worker died starts from that host's cache, and one retried on the same host
resumes its partial downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from crawler.registry import queue
from crawler.registry.queue import JobRecord


@dataclass
class Queued:
    query: str
    job_id: int | None
    already: bool  # the same build was queued or running already (``job_id``: that job, when known)


def build_key(query: str, **options) -> str:
    """What makes two builds the same job: the query (trimmed) and the recipe options."""
    recipe = {"query": " ".join(query.split()), **{k: options.get(k) for k in sorted(options)}}
    return "build:" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]


def enqueue(queries: list[str], *, db: str | None = None, inpaint: str | None = None, base: str | None = None,
            multiplier: float = 1.0, dtype: str = "fp16", force_build: bool = False) -> list[Queued]:  # fmt: skip
    """Queue one build per query; local A or C paths are made absolute (a worker runs elsewhere)."""
    options = {"inpaint": _absolute(inpaint), "base": _absolute(base), "multiplier": multiplier, "dtype": dtype,
               "force_build": force_build}  # fmt: skip
    queries = [str(Path(q).expanduser().resolve()) if Path(q).expanduser().exists() else q for q in queries]
    got = queue.enqueue_builds(db, [(build_key(q, **options), {"query": q, **options}) for q in queries])
    return [Queued(q, g.existing if g.already else g.job_id, g.already) for q, g in zip(queries, got, strict=True)]


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work(*, db: str | None = None, out: str | os.PathLike = ".", concurrency: int = 1,
         crawl_every: str | None = None) -> None:  # fmt: skip
    """Run queued builds on this host into ``out`` (and the periodic crawl when ``crawl_every`` is given) until
    SIGTERM or SIGINT, which let the running builds finish."""
    from advisor.build import build

    out = Path(out).expanduser()

    def run_build(query: str, inpaint=None, base=None, multiplier: float = 1.0, dtype: str = "fp16",
                  force_build: bool = False) -> None:  # fmt: skip
        result = build(query, out=out, inpaint=inpaint, base=base, multiplier=multiplier, dtype=dtype,
                       force_build=force_build, db=db)  # fmt: skip
        if not result.verified:
            raise RuntimeError(f"{query}: {result.action}: the output could not be verified")

    def run_crawl() -> None:
        from crawler import registry
        from crawler.crawl_all import crawl_all

        crawl_all(registry.connect(db), incremental=True)

    queue.run_worker(db, build=run_build, crawl=run_crawl if crawl_every else None, crawl_every=crawl_every,
                     concurrency=concurrency, name=worker_name())  # fmt: skip


def jobs(*, db: str | None = None, status: str | None = None) -> list[JobRecord]:
    return queue.list_jobs(db, status)


def retry(job_id: int, *, db: str | None = None) -> None:
    queue.retry(db, job_id)


def cancel(job_id: int, *, db: str | None = None) -> bool:
    return queue.cancel(db, job_id)
