"""The team's job queue: procrastinate (a PostgreSQL-based task queue) in the registry's own database.

Why procrastinate: jobs live beside the registry (no broker to run), a ``queueing_lock`` makes the same build
enqueued twice one job, a periodic task is deferred once per tick however many workers run, and workers write
heartbeats, so the job of a worker that died (SIGKILL, a host gone) is found stalled and retried. Huey, the
alternative with SQLite storage, loses a task whose worker is killed.

This module is the queue's storage and its binding to procrastinate: ``registry.open(db, "queue")`` gives a
``Queue``, whose methods queue, list, show, retry and cancel jobs and ``serve`` them. What a job does, how its
failures are told apart and when it runs again are the worker's (``advisor.team.runtime``): ``serve`` takes
plain async functions and a retry rule, and hands each a ``RunningJob`` to record its runs through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crawler.registry.errors import RegistryError
from crawler.registry.location import Location, locate
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


_SHORT = {BUILD: "build", CRAWL: "crawl", RECOVER: "recover-stalled"}


def first_line(exc: BaseException) -> str:
    """An exception in one line: its message's first line, or procrastinate's cause where it only says
    "Database error."."""
    text = str(exc).strip()
    if text in ("", "Database error.") and exc.__cause__ is not None:
        text = str(exc.__cause__).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


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
            raise QueueError(f"could not create the job queue's tables: {first_line(exc)}") from None


def _status(job) -> str:
    return str(getattr(job.status, "value", job.status))


def _alive_with_lock(app, lock: str) -> int | None:
    alive = [j.id for j in app.job_manager.list_jobs(queueing_lock=lock) if _status(j) in ("todo", "doing")]
    return alive[0] if alive else None


def _record(j, runs: dict) -> JobRecord:
    return JobRecord(j.id, _SHORT.get(j.task_name, j.task_name), _status(j), dict(j.task_kwargs or {}), j.attempts,
                     j.scheduled_at, *runs.get(j.id, (None, None)))  # fmt: skip


# A job's state and whether the worker that took it still writes heartbeats (a job of a pruned worker has none).
_STATE = """SELECT j.status::text AS status, j.queueing_lock, j.scheduled_at,
       (w.id IS NOT NULL AND w.last_heartbeat >= now() - make_interval(secs => %(stall)s)) AS alive
  FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.id = %(job_id)s"""

# Jobs running whose worker stopped writing heartbeats, found by the worker's row rather than by procrastinate's
# own query, so that a job whose worker row is gone (pruned by a worker that started: procrastinate#1518) is
# found as surely as one whose worker's heartbeats are old.
_STALLED = """SELECT j.id, j.task_name FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.status = 'doing' AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => %(stall)s))
 ORDER BY j.id"""


def _known_id(job_id: int) -> int:
    """``job_id``, or NoSuchJob where no job can have it (procrastinate's ids are positive bigints)."""
    if not 0 < job_id < 2**63:
        raise NoSuchJob(f"no job {job_id}")
    return job_id


def _state(app, job_id: int) -> dict:
    rows = app.connector.get_sync_connector().execute_query_all(
        query=_STATE, job_id=job_id, stall=settings.current().worker_stall_after)  # fmt: skip
    if not rows:
        raise NoSuchJob(f"no job {job_id}")
    return rows[0]


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


# -- who ran a job, and its last error (procrastinate keeps neither): the registry's jobrun table ---------------

_RUNS = "SELECT job_id, worker, error FROM jobrun WHERE %(job_id)s::bigint IS NULL OR job_id = %(job_id)s"
_RUN_STARTED = """INSERT INTO jobrun (job_id, worker, attempt, error, at)
VALUES (%(job_id)s, %(worker)s, %(attempt)s, NULL, now())
ON CONFLICT (job_id) DO UPDATE SET worker = EXCLUDED.worker, attempt = EXCLUDED.attempt, at = now()"""
_RUN_FAILED = "UPDATE jobrun SET error = %(error)s, at = now() WHERE job_id = %(job_id)s"


def _runs(connector, job_id: int | None = None) -> dict[int, tuple[str, str | None]]:
    rows = connector.execute_query_all(query=_RUNS, job_id=job_id)
    return {r["job_id"]: (r["worker"], r["error"]) for r in rows}


def _worker_of(app, job_id: int) -> str:
    return (_runs(app.connector.get_sync_connector(), job_id).get(job_id) or ("a worker",))[0] or "a worker"


@dataclass
class RunningJob:
    """A job as a worker runs it: what ``serve``'s functions get, to record its run in the registry."""

    id: int
    task: str  # build | crawl
    attempt: int  # this run's number, from 1
    _connector: object

    async def started(self, worker: str) -> None:
        """This run began on ``worker`` (host:pid), for `jobs` to show."""
        await self._connector.execute_query_async(query=_RUN_STARTED, job_id=self.id, worker=worker,  # type: ignore[attr-defined]
                                                  attempt=self.attempt)  # fmt: skip

    async def failed(self, error: str) -> None:
        """This run's error ("code: message", scrubbed of secrets), kept after the retries run out."""
        await self._connector.execute_query_async(query=_RUN_FAILED, job_id=self.id,  # type: ignore[attr-defined]
                                                  error=settings.scrub(error)[:2000])  # fmt: skip


JobFunction = Callable[..., Awaitable[object]]  # (RunningJob, **the job's arguments)


class Queue:
    """The job queue of the PostgreSQL registry at ``location`` (``registry.open(db, "queue")``). Each method
    opens procrastinate, with the registry created or upgraded first (its jobrun table), and closes it."""

    def __init__(self, location: Location):
        self.location = location
        if location.dialect != "postgresql":
            what = "a folder, not a registry" if location.file.is_dir() else "SQLite"
            raise TeamModeNeedsPostgres(f"team mode (a shared build queue) needs a PostgreSQL registry; "
                                        f"{location.display} is {what}")  # fmt: skip
        try:
            import procrastinate  # noqa: F401
        except ImportError:
            raise TeamModeNeedsPostgres("team mode needs its job queue: pip install 'inpaint-advisor[postgres]'") \
                from None  # fmt: skip

    def __repr__(self) -> str:
        return f"<Queue {self.location.display}>"

    def _app(self):
        import procrastinate

        return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.location.conninfo))

    @contextlib.contextmanager
    def _opened(self):
        from crawler.registry.engine import connect

        connect(self.location.url)  # the registry created or upgraded (its jobrun table)
        app = self._app()
        try:
            app.open()
            _ensure_schema(app)
        except RegistryError:
            app.close()
            raise
        except Exception as exc:  # the server refused, is down, ...
            app.close()
            raise QueueError(f"the job queue cannot be reached: {first_line(exc)}") from None
        try:
            yield app
        finally:
            app.close()

    def enqueue_builds(self, builds: list[tuple[str, dict]]) -> list[Enqueued]:
        """One build job per (lock, build arguments); one whose ``lock`` (what makes two builds the same) is
        held by a job still queued or running is not added, and that job is named."""
        from procrastinate.exceptions import AlreadyEnqueued

        done = []
        with self._opened() as app:
            for lock, build_kwargs in builds:
                job = app.configure_task(BUILD, queue=BUILDS, queueing_lock=lock)
                try:
                    done.append(Enqueued(job.defer(**build_kwargs), lock, False))
                except AlreadyEnqueued:
                    done.append(Enqueued(None, lock, True, _alive_with_lock(app, lock)))
        return done

    def jobs(self, status: str | None = None) -> list[JobRecord]:
        """Every job, oldest first; the workers' own housekeeping (the stalled-job sweep) only when it did not
        succeed."""
        with self._opened() as app:
            found = app.job_manager.list_jobs(status=status)
            runs = _runs(app.connector.get_sync_connector())
        return [_record(j, runs) for j in sorted(found, key=lambda j: j.id)
                if not (j.task_name == RECOVER and _status(j) == "succeeded")]  # fmt: skip

    def job(self, job_id: int) -> JobRecord:
        """One job with its history; NoSuchJob when there is none."""
        _known_id(job_id)
        with self._opened() as app:
            connector = app.connector.get_sync_connector()
            found = app.job_manager.list_jobs(id=job_id)
            if not found:
                raise NoSuchJob(f"no job {job_id}")
            record = _record(found[0], _runs(connector, job_id))
            record.events = [JobEvent(str(r["type"]), r["at"]) for r in connector.execute_query_all(
                query="SELECT type::text AS type, at FROM procrastinate_events WHERE job_id = %(job_id)s "
                      "ORDER BY at, id", job_id=job_id)]  # fmt: skip
        return record

    def retry(self, job_id: int) -> None:
        """A failed job, or a running one whose worker has gone silent (killed, pruned), queued again now;
        NoSuchJob or QueueError (saying why) otherwise."""
        _known_id(job_id)
        with self._opened() as app:
            state = _state(app, job_id)
            if not (state["status"] == "failed" or (state["status"] == "doing" and not state["alive"])):
                raise QueueError(_cannot("retry", job_id, state, _worker_of(app, job_id)))
            try:
                app.job_manager.retry_job_by_id(job_id, retry_at=datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - procrastinate says "Database error."; say what happened
                again = _state(app, job_id)
                if again["status"] != state["status"]:  # another worker or operator was first
                    raise QueueError(_cannot("retry", job_id, again, _worker_of(app, job_id))) from None
                other = _alive_with_lock(app, again["queueing_lock"]) if again["queueing_lock"] else None
                if other not in (None, job_id):
                    raise QueueError(f"job {job_id} cannot be queued again: the same build is queued as job "
                                     f"{other}") from None  # fmt: skip
                raise QueueError(f"job {job_id} cannot be queued again: {first_line(exc)}") from None

    def cancel(self, job_id: int) -> str:
        """A queued job removed ("cancelled"), a running one asked to stop ("stopping"); NoSuchJob or
        QueueError (saying why) for a job that is not there or has ended."""
        _known_id(job_id)
        with self._opened() as app:
            state = _state(app, job_id)
            if state["status"] not in ("todo", "doing"):
                raise QueueError(_cannot("cancel", job_id, state, _worker_of(app, job_id)))
            if app.job_manager.cancel_job_by_id(job_id):
                return "cancelled"
            if app.job_manager.cancel_job_by_id(job_id, abort=True):
                return "stopping"
            raise QueueError(_cannot("cancel", job_id, _state(app, job_id), _worker_of(app, job_id)))

    def serve(self, *, build: JobFunction, retry_at: Callable[[BaseException, int], float | None],
              crawl: JobFunction | None = None, crawl_cron: str | None = None,
              requeued: Callable[[int, str, str | None], None] | None = None, concurrency: int = 1,
              name: str | None = None) -> None:  # fmt: skip
        """Run jobs until SIGTERM/SIGINT (the running ones finish first): ``await build(job, **args)`` for a
        build job, ``await crawl(job, timestamp=...)`` on each tick of ``crawl_cron``. A build whose function
        raises runs again after ``retry_at(exc, runs so far)`` seconds, or fails for good where that is None (a
        crawl waits for its next tick). On start, and on each tick of the settings' recover_cron, jobs whose
        worker stopped writing heartbeats (or whose worker row is gone) are queued again, each told to
        ``requeued(job id, task, the worker that had it)``."""
        from procrastinate.exceptions import AlreadyEnqueued
        from procrastinate.retry import BaseRetryStrategy, RetryDecision

        timings = settings.current()  # tests of a killed worker shorten them
        app = self._app()

        class Retry(BaseRetryStrategy):
            def get_retry_decision(self, *, exception: BaseException, job) -> RetryDecision | None:
                wait = retry_at(exception, job.attempts)
                return None if wait is None else RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=wait))

        @app.task(name=BUILD, queue=BUILDS, pass_context=True, retry=Retry())
        async def build_job(context, **kwargs):
            job = context.job
            await build(RunningJob(job.id, "build", job.attempts + 1, context.app.connector), **kwargs)

        @app.periodic(cron=timings.recover_cron, periodic_id="recover-stalled")
        @app.task(name=RECOVER, queue=HOUSEKEEPING, queueing_lock="recover-stalled", pass_context=True,
                  priority=URGENT)  # fmt: skip
        async def recover_stalled(context, timestamp: int = 0):
            connector = context.app.connector
            for row in await connector.execute_query_all_async(query=_STALLED, stall=timings.worker_stall_after):
                try:  # another worker's sweep may have queued it again a moment ago
                    await context.app.job_manager.retry_job_by_id_async(row["id"], retry_at=datetime.now(UTC))
                except Exception:  # noqa: BLE001
                    continue
                ran = await connector.execute_query_all_async(query=_RUNS, job_id=row["id"])
                if requeued is not None:
                    with contextlib.suppress(Exception):  # a report that fails must not fail the sweep
                        requeued(row["id"], _SHORT.get(row["task_name"], row["task_name"]),
                                 ran[0]["worker"] if ran else None)  # fmt: skip

        if crawl is not None and crawl_cron:

            @app.periodic(cron=crawl_cron, periodic_id="crawl")
            @app.task(name=CRAWL, queue=CRAWLS, queueing_lock="crawl", priority=URGENT, pass_context=True)
            async def crawl_job(context, timestamp: int = 0):
                await crawl(RunningJob(context.job.id, "crawl", 1, context.app.connector), timestamp=timestamp)

        # a restarted worker recovers a dead one's job at once (once its heartbeats are old enough)
        with self._opened() as opened, contextlib.suppress(AlreadyEnqueued):
            opened.configure_task(RECOVER, queue=HOUSEKEEPING, queueing_lock="recover-stalled",
                                  priority=URGENT).defer(timestamp=0)  # fmt: skip
        try:
            app.run_worker(concurrency=concurrency, name=name, update_heartbeat_interval=timings.worker_heartbeat,
                           stalled_worker_timeout=timings.worker_stall_after, delete_jobs="never")  # fmt: skip
        except Exception as exc:
            raise QueueError(f"the worker stopped: {first_line(exc)}") from None


def open_queue(db: str | None = None) -> Queue:
    """The job queue of the registry ``db``, which is created or upgraded where it needs to be; TeamModeNeedsPostgres
    unless it can hold one (checked before anything is touched), and the registry's own errors (unreachable, newer
    than this code, ...) before any work is done for nothing."""
    from crawler.registry.engine import connect

    queue = Queue(locate(db))
    connect(queue.location.url)
    return queue
