"""The team's job queue: procrastinate (a PostgreSQL-based task queue) in the registry's own database.

Why procrastinate: jobs live beside the registry (no broker to run), a ``queueing_lock`` makes the same build
enqueued twice one job, a periodic task is deferred once per tick however many workers run, and workers write
heartbeats, so the job of a worker that died (SIGKILL, a host gone) is found stalled and retried. Huey, the
alternative with SQLite storage, loses a task whose worker is killed.

Only this module talks to procrastinate; callers hand in plain functions (the build and the crawl) and get
plain records back. A job's function says how it failed by raising ``JobFailed`` (a code, a message, and
whether another attempt may succeed); what is retried is decided there, not here.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crawler.registry.errors import RegistryError
from crawler.registry.location import locate
from data import settings

BUILD, CRAWL, RECOVER = "inpaint_advisor.build", "inpaint_advisor.crawl", "inpaint_advisor.recover_stalled"
BUILDS, CRAWLS, HOUSEKEEPING = "builds", "crawls", "housekeeping"  # queues
URGENT = 100  # housekeeping and the crawl go before queued builds (procrastinate takes higher priorities first)
ATTEMPTS = 3  # a job whose failures are transient stops after these runs, its last error kept


class TeamModeNeedsPostgres(RegistryError):
    code = "needs-postgres"


class QueueError(RegistryError):
    """The queue cannot be reached or created, or a job cannot be retried or cancelled in its state."""

    code = "queue-error"


class NoSuchJob(RegistryError):
    code = "not-found"


class JobFailed(Exception):
    """How a job's function failed: ``code`` (an error code, docs/errors.md), ``message`` (whole; shown on one
    line), and ``transient``: another attempt may succeed (retried with backoff, ATTEMPTS runs in all), else the
    job fails at once."""

    def __init__(self, code: str, message: str, transient: bool):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.transient = code, message, transient

    @property
    def one_line(self) -> str:
        return " ".join(self.message.split())


@dataclass
class Enqueued:
    job_id: int | None  # None: the same build was already queued (``existing`` is its job)
    lock: str
    already: bool
    existing: int | None = None


@dataclass
class JobEvent:
    type: str  # deferred | started | deferred_for_retry | failed | succeeded | cancelled | abort_requested | ...
    at: datetime | None


@dataclass
class JobRecord:
    id: int
    task: str  # build | crawl | recover-stalled
    status: str  # todo | doing | succeeded | failed | cancelled | aborted
    args: dict
    attempts: int  # runs that ended (failed, retried or done)
    scheduled_at: datetime | None
    worker: str | None  # the worker that last took it (host:pid)
    error: str | None  # the last attempt's error ("code: message"), kept after the retries ran out
    events: list[JobEvent] | None = None  # what happened to it, by time (`jobs show`; null in a listing)


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


_SHORT = {BUILD: "build", CRAWL: "crawl", RECOVER: "recover-stalled"}


def _app(db: str | None):
    loc = locate(db)
    if loc.dialect != "postgresql":
        raise TeamModeNeedsPostgres(f"team mode (a shared build queue) needs a PostgreSQL registry; the registry "
                                    f"{loc.display} is SQLite")  # fmt: skip
    try:
        import procrastinate
    except ImportError:
        raise TeamModeNeedsPostgres("team mode needs its job queue: pip install 'inpaint-advisor[postgres]'") from None
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=loc.conninfo))


def require(db: str | None) -> None:
    """TeamModeNeedsPostgres unless ``db`` can hold the queue (before any work that would be for nothing)."""
    _app(db)


_THERE = "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS there"


def _ensure_schema(app) -> None:
    """procrastinate's tables (its own schema file), created once in the registry's database."""
    connector = app.connector.get_sync_connector()
    if connector.execute_query_one(query=_THERE)["there"]:
        return
    try:
        app.schema_manager.apply_schema()
    except Exception as exc:  # noqa: BLE001 - another host may have made them at the same moment
        if not connector.execute_query_one(query=_THERE)["there"]:
            raise QueueError(f"could not create the job queue's tables: {_first_line(exc)}") from None


class _Opened:
    def __init__(self, db: str | None):
        self.db = db
        self.app = _app(db)

    def __enter__(self):
        from crawler.registry.engine import connect

        connect(self.db)  # the registry created or upgraded (its jobrun table)
        try:
            self.app.open()
            _ensure_schema(self.app)
        except RegistryError:
            self.app.close()
            raise
        except Exception as exc:  # the server refused, is down, ...
            self.app.close()
            raise QueueError(f"the job queue cannot be reached: {_first_line(exc)}") from None
        return self.app

    def __exit__(self, *exc):
        self.app.close()


def _status(job) -> str:
    return str(getattr(job.status, "value", job.status))


def enqueue_builds(db: str | None, builds: list[tuple[str, dict]]) -> list[Enqueued]:
    """One build job per (lock, build arguments); one whose ``lock`` (what makes two builds the same) is held
    by a job still queued or running is not added, and that job is named."""
    from procrastinate.exceptions import AlreadyEnqueued

    done = []
    with _Opened(db) as app:
        for lock, build_kwargs in builds:
            job = app.configure_task(BUILD, queue=BUILDS, queueing_lock=lock)
            try:
                done.append(Enqueued(job.defer(**build_kwargs), lock, False))
            except AlreadyEnqueued:
                done.append(Enqueued(None, lock, True, _alive_with_lock(app, lock)))
    return done


def _alive_with_lock(app, lock: str) -> int | None:
    alive = [j.id for j in app.job_manager.list_jobs(queueing_lock=lock) if _status(j) in ("todo", "doing")]
    return alive[0] if alive else None


def list_jobs(db: str | None, status: str | None = None) -> list[JobRecord]:
    """Every job, oldest first; the workers' own housekeeping (the stalled-job sweep) only when it did not
    succeed."""
    with _Opened(db) as app:
        found = app.job_manager.list_jobs(status=status)
        runs = _runs(app.connector.get_sync_connector())
    return [_record(j, runs) for j in sorted(found, key=lambda j: j.id)
            if not (j.task_name == RECOVER and _status(j) == "succeeded")]  # fmt: skip


def _record(j, runs: dict) -> JobRecord:
    return JobRecord(j.id, _SHORT.get(j.task_name, j.task_name), _status(j), dict(j.task_kwargs or {}), j.attempts,
                     j.scheduled_at, *runs.get(j.id, (None, None)))  # fmt: skip


def show(db: str | None, job_id: int) -> JobRecord:
    """One job with its history; NoSuchJob when there is none."""
    with _Opened(db) as app:
        connector = app.connector.get_sync_connector()
        found = app.job_manager.list_jobs(id=job_id)
        if not found:
            raise NoSuchJob(f"no job {job_id}")
        record = _record(found[0], _runs(connector, job_id))
        record.events = [JobEvent(str(r["type"]), r["at"]) for r in connector.execute_query_all(
            query="SELECT type::text AS type, at FROM procrastinate_events WHERE job_id = %(job_id)s ORDER BY at, id",
            job_id=job_id)]  # fmt: skip
    return record


# A job's state and whether the worker that took it still writes heartbeats (a job of a pruned worker has none).
_STATE = """SELECT j.status::text AS status, j.queueing_lock, j.scheduled_at,
       (w.id IS NOT NULL AND w.last_heartbeat >= now() - make_interval(secs => %(stall)s)) AS alive
  FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.id = %(job_id)s"""


def _state(app, job_id: int) -> dict:
    rows = app.connector.get_sync_connector().execute_query_all(
        query=_STATE, job_id=job_id, stall=settings.current().worker_stall_after)  # fmt: skip
    if not rows:
        raise NoSuchJob(f"no job {job_id}")
    return rows[0]


def _worker_of(app, job_id: int) -> str:
    return (_runs(app.connector.get_sync_connector(), job_id).get(job_id) or ("a worker",))[0] or "a worker"


def _cannot(action: str, job_id: int, state: dict, worker: str) -> str:
    """Why a job in ``state`` cannot be retried or cancelled, in one line."""
    status = state["status"]
    if status == "todo":
        later = state["scheduled_at"] is not None and state["scheduled_at"] > datetime.now(UTC)
        when = f"waits to run again at {state['scheduled_at']:%Y-%m-%d %H:%M:%S} UTC" if later else "waits for a worker"
        return f"job {job_id} is queued already ({when}): nothing to {action}"
    if status == "doing":
        return f"job {job_id} is running on {worker}, whose heartbeats are fresh: cancel it to stop it"
    if status == "succeeded":
        return f"job {job_id} succeeded: there is nothing to {action}"
    if action == "retry":  # cancelled or aborted: procrastinate retries failed (and stalled) jobs only
        return f"job {job_id} was {status}: queue the build again with `inpaint-advisor build MODEL --enqueue`"
    return f"job {job_id} has ended ({status}): there is nothing to cancel"


def retry(db: str | None, job_id: int) -> None:
    """A failed job, or a running one whose worker has gone silent (killed, pruned), queued again now;
    NoSuchJob or QueueError (saying why) otherwise."""
    with _Opened(db) as app:
        state = _state(app, job_id)
        if not (state["status"] == "failed" or (state["status"] == "doing" and not state["alive"])):
            raise QueueError(_cannot("retry", job_id, state, _worker_of(app, job_id)))
        try:
            app.job_manager.retry_job_by_id(job_id, retry_at=datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - procrastinate says "Database error."; say what happened instead
            again = _state(app, job_id)
            if again["status"] != state["status"]:  # another worker or operator was first
                raise QueueError(_cannot("retry", job_id, again, _worker_of(app, job_id))) from None
            other = _alive_with_lock(app, again["queueing_lock"]) if again["queueing_lock"] else None
            if other not in (None, job_id):
                raise QueueError(f"job {job_id} cannot be queued again: the same build is queued as job {other}") \
                    from None  # fmt: skip
            raise QueueError(f"job {job_id} cannot be queued again: {_first_line(exc)}") from None


def cancel(db: str | None, job_id: int) -> str:
    """A queued job removed ("cancelled"), a running one asked to stop ("stopping"); NoSuchJob or QueueError
    (saying why) for a job that is not there or has ended."""
    with _Opened(db) as app:
        state = _state(app, job_id)
        if state["status"] not in ("todo", "doing"):
            raise QueueError(_cannot("cancel", job_id, state, _worker_of(app, job_id)))
        if app.job_manager.cancel_job_by_id(job_id):
            return "cancelled"
        if app.job_manager.cancel_job_by_id(job_id, abort=True):
            return "stopping"
        raise QueueError(_cannot("cancel", job_id, _state(app, job_id), _worker_of(app, job_id)))


def _first_line(exc: BaseException) -> str:
    """An exception in one line: its message's first line, or procrastinate's cause where it only says
    "Database error."."""
    text = str(exc).strip()
    if text in ("", "Database error.") and exc.__cause__ is not None:
        text = str(exc.__cause__).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


# -- who ran a job, and its last error (procrastinate keeps neither): the registry's jobrun table ---------------


def _runs(connector, job_id: int | None = None) -> dict[int, tuple[str, str | None]]:
    rows = connector.execute_query_all(query="SELECT job_id, worker, error FROM jobrun WHERE %(job_id)s::bigint IS "
                                             "NULL OR job_id = %(job_id)s", job_id=job_id)  # fmt: skip
    return {r["job_id"]: (r["worker"], r["error"]) for r in rows}


async def _run_started(connector, job_id: int, worker: str, attempt: int) -> None:
    await connector.execute_query_async(
        query="INSERT INTO jobrun (job_id, worker, attempt, error, at) VALUES (%(job_id)s, %(worker)s, %(attempt)s, "
              "NULL, now()) ON CONFLICT (job_id) DO UPDATE SET worker = EXCLUDED.worker, attempt = EXCLUDED.attempt, "
              "at = now()", job_id=job_id, worker=worker, attempt=attempt)  # fmt: skip


async def _run_failed(connector, job_id: int, error: str) -> None:
    from data.settings import scrub

    await connector.execute_query_async(query="UPDATE jobrun SET error = %(error)s, at = now() WHERE job_id = "
                                              "%(job_id)s", job_id=job_id, error=scrub(error)[:2000])  # fmt: skip


# -- the worker -------------------------------------------------------------------------------------------------


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
    its first), or None when it has had its ATTEMPTS: INPAINT_ADVISOR_RETRY_WAIT ** (runs so far)."""
    if attempts + 1 >= ATTEMPTS:
        return None
    return settings.current().retry_wait ** (attempts + 1)


# Jobs running whose worker stopped writing heartbeats, found by the worker's row rather than by procrastinate's
# own query, so that a job whose worker row is gone (pruned by a worker that started: procrastinate#1518) is
# found as surely as one whose worker's heartbeats are old.
_STALLED = """SELECT j.id, j.task_name FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.status = 'doing' AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => %(stall)s))
 ORDER BY j.id"""


class _OneLine(logging.Formatter):
    """Log records as one scrubbed line each; with ``verbose`` their tracebacks too."""

    def __init__(self, verbose: bool):
        super().__init__("%(name)s: %(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        from data.settings import scrub

        if self.verbose:
            return scrub(super().format(record))
        return scrub(" ".join(self.formatMessage(self._with_message(record)).split()))

    @staticmethod
    def _with_message(record: logging.LogRecord) -> logging.LogRecord:
        record.message = record.getMessage()
        return record


# procrastinate's own lines for each job: the worker writes its own (JobNews) instead
_JOB_ACTIONS = {"start_job", "job_success", "job_error", "job_error_retry", "job_aborted", "job_aborted_retry",
                "loaded_job_info", "finish_task"}  # fmt: skip


def _quiet_logging(verbose: bool) -> None:
    """procrastinate (and every other library) logs one scrubbed line per record on stderr: warnings and errors
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
    (anything else counts as transient). ``crawl()`` runs the periodic crawl when ``crawl_every`` is given.
    ``tell`` hears of each job's start and end. On start, and every minute, jobs whose worker stopped writing
    heartbeats (or whose worker row is gone) are queued again."""
    from procrastinate.retry import BaseRetryStrategy, RetryDecision

    timings = settings.current()  # tests of a killed worker shorten them
    heartbeat, stall_after, recover_cron = timings.worker_heartbeat, timings.worker_stall_after, timings.recover_cron
    _quiet_logging(verbose)
    app = _app(db)

    def say(news: JobNews) -> None:
        if tell is not None:
            with contextlib.suppress(Exception):  # a report that fails must not fail the job
                tell(news)

    class Transient(BaseRetryStrategy):
        """Another run after a wait for a transient failure, until the job has had its ATTEMPTS."""

        def get_retry_decision(self, *, exception: BaseException, job) -> RetryDecision | None:
            if isinstance(exception, JobFailed) and not exception.transient:
                return None
            wait = retry_wait(job.attempts)
            return None if wait is None else RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=wait))

    @app.task(name=BUILD, queue=BUILDS, pass_context=True, retry=Transient())
    async def build_job(context, **kwargs):
        from asgiref.sync import sync_to_async

        job = context.job
        await _run_started(context.app.connector, job.id, name or "", job.attempts + 1)
        say(JobNews("start", job.id, "build", kwargs, job.attempts + 1))
        start = time.monotonic()
        try:
            made = await sync_to_async(build, thread_sensitive=False)(**kwargs)
        except Exception as exc:
            failed = exc if isinstance(exc, JobFailed) else JobFailed("build-failed", _first_line(exc), True)
            await _run_failed(context.app.connector, job.id, str(failed))
            wait = retry_wait(job.attempts) if failed.transient else None
            say(JobNews("retry" if wait is not None else "failed", job.id, "build", kwargs, job.attempts + 1,
                        time.monotonic() - start, f"{failed.code}: {failed.one_line}", wait, failed.code))  # fmt: skip
            if failed is exc:
                raise
            raise failed from exc
        say(JobNews("done", job.id, "build", kwargs, job.attempts + 1, time.monotonic() - start, str(made or "")))

    @app.periodic(cron=recover_cron, periodic_id="recover-stalled")
    @app.task(name=RECOVER, queue=HOUSEKEEPING, queueing_lock="recover-stalled", pass_context=True, priority=URGENT)
    async def recover_stalled(context, timestamp: int = 0):
        connector = context.app.connector
        stalled = await connector.execute_query_all_async(query=_STALLED, stall=stall_after)
        for row in stalled:
            job_id = row["id"]
            try:  # another worker's sweep may have queued it again a moment ago
                await context.app.job_manager.retry_job_by_id_async(job_id, retry_at=datetime.now(UTC))
            except Exception:  # noqa: BLE001
                continue
            ran = await connector.execute_query_all_async(query="SELECT worker FROM jobrun WHERE job_id = "
                                                          "%(job_id)s", job_id=job_id)  # fmt: skip
            worker = ran[0]["worker"] if ran else None
            say(JobNews("requeued", job_id, _SHORT.get(row["task_name"], row["task_name"]), {}, 0,
                        detail=worker or "a worker"))  # fmt: skip

    if crawl is not None and crawl_every:

        @app.periodic(cron=timings.crawl_cron or cron_for(crawl_every), periodic_id="crawl")
        @app.task(name=CRAWL, queue=CRAWLS, queueing_lock="crawl", priority=URGENT, pass_context=True)
        async def crawl_job(context, timestamp: int = 0):
            from asgiref.sync import sync_to_async

            job = context.job
            await _run_started(context.app.connector, job.id, name or "", job.attempts + 1)
            say(JobNews("start", job.id, "crawl", {"timestamp": timestamp}, 1))
            start = time.monotonic()
            try:
                made = await sync_to_async(crawl, thread_sensitive=False)()
            except Exception as exc:
                failed = exc if isinstance(exc, JobFailed) else JobFailed("crawl-failed", _first_line(exc), False)
                await _run_failed(context.app.connector, job.id, str(failed))
                say(JobNews("failed", job.id, "crawl", {"timestamp": timestamp}, 1, time.monotonic() - start,
                            f"{failed.code}: {failed.one_line}", None, failed.code))  # fmt: skip
                raise
            say(JobNews("done", job.id, "crawl", {"timestamp": timestamp}, 1, time.monotonic() - start,
                        str(made or "")))  # fmt: skip

    from procrastinate.exceptions import AlreadyEnqueued

    # a restarted worker recovers a dead one's job at once (once its heartbeats are old enough)
    with _Opened(db) as opened, contextlib.suppress(AlreadyEnqueued):
        opened.configure_task(RECOVER, queue=HOUSEKEEPING, queueing_lock="recover-stalled",
                              priority=URGENT).defer(timestamp=0)  # fmt: skip
    try:
        app.run_worker(concurrency=concurrency, name=name, update_heartbeat_interval=heartbeat,
                       stalled_worker_timeout=stall_after, delete_jobs="never")  # fmt: skip
    except Exception as exc:
        raise QueueError(f"the worker stopped: {_first_line(exc)}") from None
