"""The team's job queue: procrastinate (a PostgreSQL-based task queue) in the registry's own database.

Why procrastinate: jobs live beside the registry (no broker to run), a ``queueing_lock`` makes the same build
enqueued twice one job, a periodic task is deferred once per tick however many workers run, and workers write
heartbeats, so the job of a worker that died (SIGKILL, a host gone) is found stalled and retried. Huey, the
alternative with SQLite storage, loses a task whose worker is killed.

Only this module talks to procrastinate; callers hand in plain functions (the build and the crawl) and get
plain records back.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from crawler.registry.errors import RegistryError
from crawler.registry.location import locate

BUILD, CRAWL, RECOVER = "inpaint_advisor.build", "inpaint_advisor.crawl", "inpaint_advisor.recover_stalled"
BUILDS, CRAWLS, HOUSEKEEPING = "builds", "crawls", "housekeeping"  # queues
URGENT = 100  # housekeeping and the crawl go before queued builds (procrastinate takes higher priorities first)
ATTEMPTS = 3  # a job that keeps failing stops after these, its last error kept


def _seconds(name: str, default: float) -> float:
    """A worker timing from the environment (tests of a killed worker shorten them)."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class TeamModeNeedsPostgres(RegistryError):
    code = "needs-postgres"
    exit_code = 2


class QueueError(RegistryError):
    code = "queue-error"
    exit_code = 1


@dataclass
class Enqueued:
    job_id: int | None  # None: the same build was already queued (``existing`` is its job)
    lock: str
    already: bool
    existing: int | None = None


@dataclass
class JobRecord:
    id: int
    task: str  # build | crawl | recover-stalled
    status: str  # todo | doing | succeeded | failed | cancelled | aborted
    args: dict
    attempts: int  # runs that ended (failed, retried or done)
    scheduled_at: datetime | None
    worker: str | None  # the worker that last took it (host:pid)
    error: str | None  # the last attempt's error, kept after the retries ran out


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
            raise QueueError(f"could not create the job queue's tables: {str(exc).splitlines()[0]}") from None


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
            raise QueueError(f"the job queue cannot be reached: {str(exc).splitlines()[0]}") from None
        return self.app

    def __exit__(self, *exc):
        self.app.close()


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
                found = app.job_manager.list_jobs(queueing_lock=lock)
                alive = [j.id for j in found if str(getattr(j.status, "value", j.status)) in ("todo", "doing")]
                done.append(Enqueued(None, lock, True, alive[0] if alive else None))
    return done


def list_jobs(db: str | None, status: str | None = None) -> list[JobRecord]:
    with _Opened(db) as app:
        found = app.job_manager.list_jobs(status=status)
        runs = _runs(app.connector.get_sync_connector())
    return [JobRecord(j.id, _SHORT.get(j.task_name, j.task_name), str(getattr(j.status, "value", j.status)),
                      dict(j.task_kwargs or {}), j.attempts, j.scheduled_at, *runs.get(j.id, (None, None)))
            for j in sorted(found, key=lambda j: j.id)]  # fmt: skip


def retry(db: str | None, job_id: int) -> None:
    """A failed job (or one stuck in doing) queued again now."""
    with _Opened(db) as app:
        try:
            app.job_manager.retry_job_by_id(job_id, retry_at=datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - procrastinate's own message: not found, or not retryable
            raise QueueError(f"job {job_id} cannot be retried: {_first_line(exc)}") from None


def cancel(db: str | None, job_id: int) -> bool:
    """A queued job removed; a running one asked to stop (True either way when the job existed)."""
    with _Opened(db) as app:
        try:
            if app.job_manager.cancel_job_by_id(job_id):
                return True
            return app.job_manager.cancel_job_by_id(job_id, abort=True)
        except Exception as exc:  # noqa: BLE001
            raise QueueError(f"job {job_id} cannot be cancelled: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- who ran a job, and its last error (procrastinate keeps neither): the registry's jobrun table ---------------


def _runs(connector) -> dict[int, tuple[str, str | None]]:
    return {r["job_id"]: (r["worker"], r["error"])
            for r in connector.execute_query_all(query="SELECT job_id, worker, error FROM jobrun")}  # fmt: skip


async def _run_started(connector, job_id: int, worker: str, attempt: int) -> None:
    await connector.execute_query_async(
        query="INSERT INTO jobrun (job_id, worker, attempt, error, at) VALUES (%(job_id)s, %(worker)s, %(attempt)s, "
              "NULL, now()) ON CONFLICT (job_id) DO UPDATE SET worker = EXCLUDED.worker, attempt = EXCLUDED.attempt, "
              "at = now()", job_id=job_id, worker=worker, attempt=attempt)  # fmt: skip


async def _run_failed(connector, job_id: int, error: str) -> None:
    await connector.execute_query_async(query="UPDATE jobrun SET error = %(error)s, at = now() WHERE job_id = "
                                              "%(job_id)s", job_id=job_id, error=error[:2000])  # fmt: skip


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


def run_worker(db: str | None, *, build: Callable[..., object], crawl: Callable[[], object] | None = None,
               crawl_every: str | None = None, concurrency: int = 1, name: str | None = None) -> None:  # fmt: skip
    """Run jobs until SIGTERM/SIGINT (the running ones finish first). ``build(**job_args)`` runs a build job;
    ``crawl()`` the periodic crawl when ``crawl_every`` is given. On start, and every minute, jobs whose worker
    stopped writing heartbeats are queued again."""
    import procrastinate

    heartbeat = _seconds("INPAINT_ADVISOR_WORKER_HEARTBEAT", 10)
    stall_after = _seconds("INPAINT_ADVISOR_WORKER_STALL_AFTER", 60)
    recover_cron = os.environ.get("INPAINT_ADVISOR_RECOVER_CRON", "* * * * *")
    app = _app(db)

    # procrastinate's max_attempts counts retries: ATTEMPTS runs in all
    retry_wait = int(_seconds("INPAINT_ADVISOR_RETRY_WAIT", 5))

    @app.task(name=BUILD, queue=BUILDS, pass_context=True, retry=procrastinate.RetryStrategy(
        max_attempts=ATTEMPTS - 1, exponential_wait=retry_wait))  # fmt: skip
    async def build_job(context, **kwargs):
        from asgiref.sync import sync_to_async

        await _run_started(context.app.connector, context.job.id, name or "", context.job.attempts + 1)
        try:
            await sync_to_async(build, thread_sensitive=False)(**kwargs)
        except Exception as exc:
            await _run_failed(context.app.connector, context.job.id, _first_line(exc))
            raise

    @app.periodic(cron=recover_cron, periodic_id="recover-stalled")
    @app.task(name=RECOVER, queue=HOUSEKEEPING, queueing_lock="recover-stalled", pass_context=True, priority=URGENT)
    async def recover_stalled(context, timestamp: int = 0):
        manager = context.app.job_manager
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=stall_after):
            await manager.retry_job(job)

    if crawl is not None and crawl_every:

        @app.periodic(cron=os.environ.get("INPAINT_ADVISOR_CRAWL_CRON") or cron_for(crawl_every), periodic_id="crawl")
        @app.task(name=CRAWL, queue=CRAWLS, queueing_lock="crawl", priority=URGENT)
        async def crawl_job(timestamp: int = 0):
            from asgiref.sync import sync_to_async

            await sync_to_async(crawl, thread_sensitive=False)()

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
