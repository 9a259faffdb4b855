"""The worker's runtime: what a queued job does around its function, and how its failures are told apart.

The queue (``registry.open(db, "queue")``) stores the jobs and hands them out; here each is run: its start
recorded and told, its function called in a thread, its failure turned into a ``JobFailed`` (a code, a
message, and whether another attempt may succeed), recorded and told, and the wait before its next run chosen.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from crawler import registry
from data import settings


class JobFailed(Exception):
    """How a job's function failed: ``code`` (an error code, docs/errors.md), ``message`` (whole; shown on one
    line), and ``transient``: another attempt may succeed (retried with backoff, JOB_ATTEMPTS runs in all), else
    the job fails at once."""

    def __init__(self, code: str, message: str, transient: bool):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.transient = code, message, transient

    @property
    def one_line(self) -> str:
        return " ".join(self.message.split())


@dataclass
class JobNews:
    """What a worker tells of a job as it goes (one line each, advisor.team.worker writes them)."""

    kind: str  # start | done | retry | failed | requeued
    job_id: int
    task: str  # build | crawl
    args: dict
    attempt: int  # this run's number, from 1
    seconds: float | None = None  # how long the run took (done, retry, failed)
    detail: str = ""  # done: what the function returned; retry/failed: "code: message"; requeued: its worker
    retry_in: float | None = None  # retry: the wait before the next run
    code: str | None = None  # retry/failed: the error code


def cron_for(every: str) -> str:
    """A period ("30m", "6h", "1d") as the cron line every worker derives alike: the periodic crawl is deferred
    once per tick of it across workers. Periods must divide an hour or a day evenly."""
    m = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", every or "")
    if not m:
        raise ValueError(f"{every!r} is not a period like 30m, 6h or 1d")
    n, unit = int(m[1]), m[2]
    if unit == "m" and n in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30):
        return f"*/{n} * * * *"
    if unit == "h" and n in (1, 2, 3, 4, 6, 8, 12):
        return f"0 */{n} * * *"
    if (unit == "h" and n == 24) or (unit == "d" and n == 1):
        return "0 0 * * *"
    raise ValueError(f"{every!r} does not divide an hour or a day evenly: use 15m, 30m, 1h, 2h, 3h, 4h, 6h, 8h, 12h "
                     "or 1d")  # fmt: skip


def retry_wait(attempts: int) -> float | None:
    """The wait before the next run of a job that failed transiently after ``attempts`` earlier runs (0 for
    its first), or None when it has had its JOB_ATTEMPTS: INPAINT_ADVISOR_RETRY_WAIT ** (runs so far)."""
    if attempts + 1 >= registry.JOB_ATTEMPTS:
        return None
    return settings.current().retry_wait ** (attempts + 1)


def _retry_at(exc: BaseException, attempts: int) -> float | None:
    """The queue's retry rule: a permanent JobFailed never runs again; anything else counts as transient."""
    if isinstance(exc, JobFailed) and not exc.transient:
        return None
    return retry_wait(attempts)


class _OneLine(logging.Formatter):
    """Log records as one scrubbed line each; with ``verbose`` their tracebacks too."""

    def __init__(self, verbose: bool):
        super().__init__("%(name)s: %(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            return settings.scrub(super().format(record))
        record.message = record.getMessage()
        return settings.scrub(" ".join(self.formatMessage(record).split()))


# procrastinate's own lines for each job: the worker writes its own (JobNews) instead
_JOB_ACTIONS = {"start_job", "job_success", "job_error", "job_error_retry", "job_aborted", "job_aborted_retry",
                "loaded_job_info", "finish_task"}  # fmt: skip


def _quiet_logging(verbose: bool) -> None:
    """The queue (and every other library) logs one scrubbed line per record on stderr: warnings and errors
    only, without tracebacks and without its per-job lines; ``verbose``: its info lines and tracebacks too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(verbose))
    if not verbose:
        handler.addFilter(lambda record: getattr(record, "action", None) not in _JOB_ACTIONS)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("procrastinate").setLevel(logging.INFO if verbose else logging.WARNING)


def run_worker(db: str | None, *, build: Callable[..., object], crawl: Callable[[], object] | None = None,
               crawl_every: str | None = None, concurrency: int = 1, name: str | None = None,
               tell: Callable[[JobNews], None] | None = None, verbose: bool = False) -> None:  # fmt: skip
    """Run jobs until SIGTERM/SIGINT (the running ones finish first). ``build(**job_args)`` runs a build job
    and returns what it made (for ``tell``); it raises JobFailed to say whether another attempt may succeed
    (anything else counts as transient). ``crawl()`` runs the periodic crawl when ``crawl_every`` is given
    (a crawl that fails is not run again before its next tick). ``tell`` hears of each job's start and end,
    and of jobs queued again because their worker went silent."""
    queue = registry.open(db, "queue")
    _quiet_logging(verbose)

    def say(news: JobNews) -> None:
        if tell is not None:
            with contextlib.suppress(Exception):  # a report that fails must not fail the job
                tell(news)

    async def run(job, function: Callable[..., object], args: dict, code: str, transient: bool, **kwargs) -> None:
        from asgiref.sync import sync_to_async

        await job.started(name or "")
        say(JobNews("start", job.id, job.task, args, job.attempt))
        start = time.monotonic()
        try:
            made = await sync_to_async(function, thread_sensitive=False)(**kwargs)
        except Exception as exc:
            failed = exc if isinstance(exc, JobFailed) else JobFailed(code, registry.first_line(exc), transient)
            await job.failed(str(failed))
            wait = retry_wait(job.attempt - 1) if failed.transient and job.task == "build" else None
            say(JobNews("retry" if wait is not None else "failed", job.id, job.task, args, job.attempt,
                        time.monotonic() - start, f"{failed.code}: {failed.one_line}", wait, failed.code))  # fmt: skip
            if failed is exc:
                raise
            raise failed from exc
        say(JobNews("done", job.id, job.task, args, job.attempt, time.monotonic() - start, str(made or "")))

    async def build_job(job, **kwargs) -> None:
        await run(job, build, kwargs, "build-failed", True, **kwargs)

    async def crawl_job(job, timestamp: int = 0) -> None:
        assert crawl is not None
        await run(job, crawl, {"timestamp": timestamp}, "crawl-failed", False)

    def requeued(job_id: int, task: str, worker: str | None) -> None:
        say(JobNews("requeued", job_id, task, {}, 0, detail=worker or "a worker"))

    crawl_cron = (settings.current().crawl_cron or cron_for(crawl_every)) if crawl and crawl_every else None
    queue.serve(build=build_job, retry_at=_retry_at, crawl=crawl_job if crawl_cron else None, crawl_cron=crawl_cron,
                requeued=requeued, concurrency=concurrency, name=name)  # fmt: skip
