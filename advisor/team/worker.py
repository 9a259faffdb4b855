"""Team mode: builds queued in the shared PostgreSQL registry and run by workers on any host.

A build job carries what makes the build itself: the model and version its query resolved to when it was
queued, M and the precision; A and C are always the family's official pair, which every worker fetches (a
file given on the queueing host would not be there for a worker). Where the output goes is the worker's choice
(its ``out``, typically shared storage), and downloads go to that host's cache, so a job retried on another
host after its worker died starts from that host's cache, and one retried on the same host resumes its
partial downloads.

What is retried is decided here, by error code (``PERMANENT``, ``TRANSIENT``); docs/team.md lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from advisor.team.runtime import JobFailed, JobNews, run_worker
from crawler import registry, sources
from crawler.registry import JobRecord
from data.errors import InpaintAdvisorError, exit_status

# A failure another attempt would meet again: the job fails at once, with its code.
PERMANENT = frozenset({
    "not-found", "no-file", "no-registry", "login-wall", "downloads-disabled", "gated", "no-access", "region-blocked",
    "exists",
    "is-a-base", "no-build-route", "nonfinite", "hash-mismatch", "size-mismatch", "bad-input", "bad-query",
    "bad-checkpoint", "not-a-model", "merge-refused", "offline", "unverified", "usage", "not-a-registry",
    "registry-too-new", "unsupported-registry", "missing-driver", "needs-postgres", "no-ui", "no-route-for-ui",
    "error",  # an error of ours without a code of its own: a bug, which another run meets again
})  # fmt: skip
# A failure of the moment (the network, a server, a full or unmounted disk, the database): retried with backoff,
# registry.JOB_ATTEMPTS runs in all. An "http-error" is transient for HTTP 5xx, 408 and 429 only; a code in neither
# set (an unexpected error) is retried too.
TRANSIENT = frozenset({
    "network", "disk", "download-failed", "merge-failed", "os-error", "build-failed", "interrupted",
    "registry-error", "registry-unreachable", "registry-read-only", "queue-error", "http-error", "get-failed",
})  # fmt: skip


def is_transient(code: str, message: str = "") -> bool:
    """Whether a build job that failed with ``code`` (and ``message``) may succeed when run again."""
    if code == "http-error":
        status = re.search(r"\bHTTP (\d{3})\b", message)
        return status is None or status[1] in ("408", "429") or status[1].startswith("5")
    return code not in PERMANENT


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(code, message) of what a build raised."""
    if isinstance(exc, InpaintAdvisorError):
        return exc.code, str(exc)
    if isinstance(exc, OSError):
        return "os-error", f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    return "build-failed", f"{type(exc).__name__}: {exc}"


@dataclass
class Queued:
    query: str  # as asked
    target: str  # what the job builds: the model (and version) the query resolved to, e.g. civitai:ID@VERSION
    name: str  # that model's name
    job_id: int | None
    already: bool  # the same build was queued or running already (``job_id``: that job, when known)


class NotQueued(InpaintAdvisorError):
    """Nothing was queued: a query matched nothing (or several models), or names what no worker can fetch."""

    code = "not-found"


@dataclass
class _Target:
    query: str
    target: str
    name: str
    model_id: str
    version_id: str | None


def build_key(model_id: str, version_id: str | None, *, multiplier: float = 1.0, dtype: str = "fp16",
              force_build: bool = False) -> str:  # fmt: skip
    """What makes two builds the same job: the resolved model and version, A and C (the family's official pair,
    always, for a queued build), M, the precision and --force-build; never the query's text."""
    recipe = {"model": model_id, "version": version_id, "a": "official", "c": "official",
              "multiplier": float(multiplier), "dtype": dtype, "force_build": bool(force_build)}  # fmt: skip
    return "build:" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]


def get_key(model_id: str, version_id: str | None, *, root: str, ui: str, route: str | None) -> str:
    """What makes two gets the same job: the resolved model and version, the UI's folder and the answer asked."""
    what = {"model": model_id, "version": version_id, "root": root, "ui": ui, "route": route}
    return "get:" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def enqueue_get(query: str, *, root: str | os.PathLike, ui: str | None = None, route: str | None = None,
                db: str | None = None) -> Queued:  # fmt: skip
    """Queue `get` of ``query`` into the UI at ``root``, run by a worker whose host sees that folder under the same
    path (shared storage, or a worker on the UI's own host). The query is resolved here first, as for a build;
    NotQueued when it matches nothing or the folder is no UI."""
    from advisor.local import uis

    queue = registry.open(db, "queue")  # a SQLite registry is refused before anything is resolved
    folder = Path(root).expanduser().resolve()
    install = uis.find(folder, ui) if folder.is_dir() else None
    if install is None or install.ui == "folder":
        raise NotQueued(f"nothing queued: {folder} is not a UI folder inpaint-advisor recognises", "no-ui")
    resolved = _target_of(query, db)
    if not isinstance(resolved, _Target):
        raise NotQueued(f"nothing queued: {resolved[1]}", resolved[0])
    key = get_key(resolved.model_id, resolved.version_id, root=str(folder), ui=install.ui, route=route)
    (got,) = queue.enqueue_builds([(key, {"query": resolved.target, "asked": query, "name": resolved.name,
                                              "get_root": str(folder), "ui": install.ui, "route": route})])
    return Queued(query, resolved.target, resolved.name, got.existing if got.already else got.job_id, got.already)


def _target_of(query: str, db: str | None) -> _Target | tuple[str, str]:
    """The model and version ``query`` means, as a query any worker resolves alike (its ids), or why not:
    (code, reason)."""
    from advisor.advice import NotFound, QueryError
    from advisor.advice.lookup import lookup
    from advisor.safety import terminal_text
    from merge.header import CheckpointError

    shown = f"“{terminal_text(query)}”"
    try:
        found = lookup(query, db=db)
    except QueryError as exc:
        return exc.code, str(exc)
    except (NotFound, CheckpointError) as exc:
        return exc.code, f"{shown}: {exc}"
    match = found.match
    if match is None:
        if found.candidates:
            if len(found.candidates) == 1:
                only = found.candidates[0]
                return "not-found", f"{shown}: did you mean {only.name} ({only.model_id})? name it by id"
            ids = ", ".join(c.model_id for c in found.candidates[:3])
            return "not-found", f"{shown} matches several models ({ids}, ...): name one by id"
        return "not-found", f"no model matched {shown}"
    if match.source == "file":
        return "bad-query", (f"{shown} is a file on this host that the registry does not know by its SHA256: "
                             "workers cannot read it (build it here, without --enqueue)")  # fmt: skip
    if match.source == "family" or match.model_id is None:
        return "is-a-base", f"{shown} is {terminal_text(match.name)}, a base model: there is nothing to build"
    source = sources.of_id(match.model_id)
    target = source.query(match.model_id, match.version_id) if source else match.model_id
    return _Target(query, target, match.name, match.model_id, match.version_id)


def enqueue(queries: list[str], *, db: str | None = None, multiplier: float = 1.0, dtype: str = "fp16",
            force_build: bool = False) -> list[Queued]:  # fmt: skip
    """Queue one build per query, each resolved first (advisor.advice.lookup) to the model and version it means; the
    same resolved recipe is one job, however it was named. NotQueued, and nothing queued, when a query
    matches nothing or several models, or names a file only this host has."""
    queue = registry.open(db, "queue")  # a SQLite registry is refused before anything is resolved
    targets: list[_Target] = []
    problems: list[tuple[str, str]] = []
    for q in queries:
        resolved = _target_of(q, db)
        if isinstance(resolved, _Target):
            targets.append(resolved)
        else:
            problems.append(resolved)
    if problems:
        code = max((p[0] for p in problems), key=exit_status)  # a usage error outranks a name that matched nothing
        raise NotQueued("nothing queued: " + "; ".join(p[1] for p in problems), code)
    multiplier, force_build = float(multiplier), bool(force_build)
    options = {"multiplier": multiplier, "dtype": dtype, "force_build": force_build}
    got = queue.enqueue_builds([(build_key(t.model_id, t.version_id, multiplier=multiplier, dtype=dtype,
                                               force_build=force_build),
                                     {"query": t.target, "asked": t.query, "name": t.name, **options})
                                    for t in targets])  # fmt: skip
    return [Queued(t.query, t.target, t.name, g.existing if g.already else g.job_id, g.already)
            for t, g in zip(targets, got, strict=True)]  # fmt: skip


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def news_line(news: JobNews) -> str:
    """One line for the worker's log: a job started, done (in how long, and its output), failed (its code and
    one-line reason, and whether it runs again), or queued again after its worker went silent."""
    from advisor.safety import terminal_text
    from data.settings import scrub

    what = news.args.get("query") or ""
    if news.args.get("name"):
        what += f" ({news.args['name']})"
    took = f" in {news.seconds:.1f} s" if news.seconds is not None else ""
    task = "get" if news.args.get("get_root") else news.task  # a queued get runs as a build job
    head = f"job {news.job_id}" + (f" {task}" if task != "build" else "")
    if news.kind == "start":
        again = f", attempt {news.attempt}/{registry.JOB_ATTEMPTS}" if news.task == "build" and news.attempt > 1 else ""
        text = f"{head} start: {what}{again}" if what else f"{head} start{again}"
    elif news.kind == "done":
        text = f"{head} done{took}" + (f": {news.detail}" if news.detail else "")
    elif news.kind == "retry":
        reason = news.detail.split(": ", 1)[-1]
        text = (f"{head} failed ({news.code}){took}, runs again in {news.retry_in:g} s (attempt "
                f"{news.attempt + 1}/{registry.JOB_ATTEMPTS}): {reason}")  # fmt: skip
    elif news.kind == "failed":
        text = f"{head} failed ({news.code}){took}: {news.detail.split(': ', 1)[-1]}"
    else:  # requeued
        text = f"{head} queued again: its worker ({news.detail}) stopped sending heartbeats"
    return scrub(" ".join(terminal_text(text).split()))


def _say(line: str) -> None:
    from data.settings import scrub

    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {scrub(line)}\n")
    sys.stderr.flush()


def work(*, db: str | None = None, out: str | os.PathLike = ".", concurrency: int = 1,
         crawl_every: str | None = None, verbose: bool = False,
         say: Callable[[str], None] = _say) -> None:  # fmt: skip
    """Run queued builds on this host into ``out`` (and the periodic crawl when ``crawl_every`` is given) until
    SIGTERM or SIGINT, which let the running builds finish. ``say`` gets one line per job (start, done, failed);
    ``verbose`` adds the queue's own log and tracebacks (on stderr)."""
    from advisor.build import build

    out = Path(out).expanduser()
    me = worker_name()

    def run_build(query: str, asked: str | None = None, name: str | None = None, inpaint: str | None = None,
                  base: str | None = None, multiplier: float = 1.0, dtype: str = "fp16",
                  force_build: bool = False, get_root: str | None = None, ui: str | None = None,
                  route: str | None = None) -> str:  # fmt: skip
        # (inpaint and base: jobs queued before queued builds took the official pair only)
        if get_root is not None:  # a queued `get`: the UI's folder as the job names it
            return run_get(query, get_root, ui, route)
        try:
            result = build(query, out=out, inpaint=inpaint, base=base, multiplier=multiplier, dtype=dtype,
                           force_build=force_build, db=db)  # fmt: skip
        except Exception as exc:
            code, message = failure_of(exc)
            raise JobFailed(code, message, is_transient(code, message)) from exc
        made = result.output.path if result.output else query
        if not result.verified:
            raise JobFailed("unverified", f"{made}: {result.action}, but it could not be verified (the "
                                  "registry records no SHA256 for it)", False)  # fmt: skip
        return made

    def run_get(query: str, root: str, ui: str | None, route: str | None) -> str:
        from advisor.get import get

        try:
            result = get(query, root=root, ui=ui, route=route, db=db)
        except Exception as exc:
            code, message = failure_of(exc)
            raise JobFailed(code, message, is_transient(code, message)) from exc
        placed = [p.path or p.destination for p in result.files] + ([result.checkpoint] if result.checkpoint else [])
        return ", ".join(placed) or result.answer.name

    def run_crawl() -> str:
        from crawler.crawl_all import crawl_all

        summary = crawl_all(registry.open(db), incremental=True)
        return ", ".join(f"{s.source} {s.status}" for s in summary.sources)

    registry.open(db, "queue")  # a registry that cannot hold the queue is refused before the worker says a word
    say(f"worker {me}: builds into {out.resolve()}, {concurrency} at a time"
        + (f", crawls every {crawl_every}" if crawl_every else ""))  # fmt: skip
    run_worker(db, build=run_build, crawl=run_crawl if crawl_every else None, crawl_every=crawl_every,
                     concurrency=concurrency, name=me, tell=lambda news: say(news_line(news)),
                     verbose=verbose)  # fmt: skip
    say(f"worker {me}: stopped")


def jobs(*, db: str | None = None, status: str | None = None) -> list[JobRecord]:
    return registry.open(db, "queue").jobs(status)


def show(job_id: int, *, db: str | None = None) -> JobRecord:
    return registry.open(db, "queue").job(job_id)


def retry(job_id: int, *, db: str | None = None) -> None:
    registry.open(db, "queue").retry(job_id)


def cancel(job_id: int, *, db: str | None = None) -> str:
    return registry.open(db, "queue").cancel(job_id)
