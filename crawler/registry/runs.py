"""Crawl runs: one writer per source at a time, and resuming where a killed or failed run stopped."""

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from crawler.registry.schema import CrawlLock, CrawlRun, as_record
from crawler.registry.sql import execute, insert
from data.errors import InpaintAdvisorError
from merge import portable

# A lock whose holder has not written a page for this long is considered abandoned (a crashed other host).
STALE_AFTER = timedelta(minutes=15)
# A run left in one of these states with a cursor is continued by the next start of the same mode.
RESUMABLE = ("interrupted", "failed", "stopped")


def utcnow() -> datetime:
    return datetime.now(UTC)


class CrawlLocked(InpaintAdvisorError):
    code = "crawl-locked"

    def __init__(self, lock: CrawlLock):
        self.lock = lock
        super().__init__(
            f"another {lock.source} crawl (run {lock.run_id}, pid {lock.pid} on {lock.host}) is running on this "
            f"registry; last progress {lock.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC. Wait for it to finish."
        )


def _pid_alive(pid: int) -> bool:
    return portable.pid_alive(pid)  # a zombie (a killed crawl its parent has not reaped) holds nothing


def _is_stale(lock: CrawlLock, host: str, now: datetime) -> bool:
    if lock.host == host:
        return not _pid_alive(lock.pid)
    return now - lock.heartbeat_at > STALE_AFTER


MAX_ERRORS = 50  # errors a run keeps with their detail (every one is counted)


@dataclass
class ErrorNote:
    """One error a crawl met: where and why, secrets removed."""

    source: str  # civitai | hf
    url: str  # what was asked (tokens and secret parameters removed); "" where no one request failed
    reason: str  # why: the answer (HTTP status and the server's message) or the failure, and what comes of it


def stopped_note(pages: int) -> str:
    """What a crawl that stopped at ``--max-pages`` says: not a failure, and how to go on."""
    return f"stopped after {pages} page{'s' if pages != 1 else ''} as asked (--max-pages); run again to go on"


@dataclass
class RunSummary:
    """What every crawl reports; each source adds its own counts."""

    run_id: int
    mode: str
    resumed: bool
    pages: int = 0
    written: int = 0  # models whose content changed
    new_inpainting: int = 0
    new_links: int = 0
    retries: int = 0
    errors: int = 0  # every error this crawl met (a failed request, a file not read), counted
    first_errors: list[ErrorNote] = field(default_factory=list)  # the first 50 of them, each with its URL and reason
    status: str = "running"  # ok | stopped (at --max-pages: run again to go on) | failed | interrupted
    error: str | None = None  # why the crawl failed
    note: str | None = None  # how it stopped short, where it did

    def note_error(self, source: str, url: str, reason: str) -> None:
        """Count an error and keep its detail (the first MAX_ERRORS), tokens and URL secrets removed."""
        from data.settings import redact, scrub

        self.errors += 1
        if len(self.first_errors) < MAX_ERRORS:
            shown = redact(scrub(url)) if url else ""
            self.first_errors.append(ErrorNote(source, shown, scrub(" ".join(reason.split()))[:300]))

    def run_counts(self) -> dict[str, int]:
        """Counts of this source that its run record keeps (``CrawlRun`` columns)."""
        return {}


def record_failure(engine: Engine, run: CrawlRun, summary: RunSummary, exc: BaseException) -> None:
    """The run stops: keep its cursor for the next start, record the error, release the lock."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    summary.status, summary.error = status, str(exc) or type(exc).__name__
    summary.note_error(run.source, str(getattr(exc, "url", "") or ""), summary.error)
    finish(engine, run, status, summary.error, summary)


@dataclass
class Started:
    run: CrawlRun
    resumed: bool

    @property
    def run_id(self) -> int:
        """The run's id, which the database gave it when ``start`` first committed it."""
        assert self.run.id is not None
        return self.run.id


def _run(conn: Connection, where: str, **params) -> CrawlRun | None:
    """The newest run matching ``where``, as a detached record."""
    row = execute(conn, f"SELECT * FROM crawlrun WHERE {where} ORDER BY id DESC LIMIT 1", params).first()
    return as_record(CrawlRun, row) if row is not None else None


def _take_lock(engine: Engine, source: str, host: str, pid: int, now: datetime) -> None:
    for _ in range(3):
        try:
            with engine.begin() as conn:
                execute(conn, "INSERT INTO crawllock (source, run_id, host, pid, heartbeat_at) "
                        "VALUES (%(source)s, 0, %(host)s, %(pid)s, %(now)s)", source=source, host=host, pid=pid,
                        now=now)  # fmt: skip
            return
        except IntegrityError:
            with engine.begin() as conn:
                row = execute(conn, "SELECT * FROM crawllock WHERE source = %(source)s", source=source).first()
                if row is None:
                    continue
                lock = as_record(CrawlLock, row)
                if not _is_stale(lock, host, now):
                    raise CrawlLocked(lock) from None
                # Compare-and-delete: only the abandoned holder's row, so two starters cannot both take over.
                execute(
                    conn,
                    "DELETE FROM crawllock WHERE source = %(source)s AND pid = %(pid)s",
                    source=source,
                    pid=lock.pid,
                )
    raise RuntimeError(f"could not take the {source} crawl lock")


def start(
    engine: Engine, source: str, mode: str, *, since: datetime | None = None, period: str | None = None
) -> Started:
    """Take the source's lock, then resume its last stopped, interrupted or failed run or open a new one."""
    host, pid, now = socket.gethostname(), os.getpid(), utcnow()
    _take_lock(engine, source, host, pid, now)
    with engine.begin() as conn:
        execute(conn, "UPDATE crawlrun SET status = 'interrupted', last_error = %(killed)s "
                "WHERE source = %(source)s AND status = 'running'",
                killed="the process stopped without finishing (killed?)", source=source)  # fmt: skip
        last = _run(conn, "source = %(source)s", source=source)
        resumed = last is not None and last.status in RESUMABLE and bool(last.cursor) and last.mode == mode
        taken = {"host": host, "pid": pid, "now": now}
        if resumed:
            assert last is not None
            execute(conn, "UPDATE crawlrun SET status = 'running', host = %(host)s, pid = %(pid)s, "
                    "heartbeat_at = %(now)s, last_error = NULL WHERE id = %(id)s", taken, id=last.id)  # fmt: skip
            run_id = last.id
        else:
            new = CrawlRun(source=source, mode=mode, started_at=now, since=since, period=period, status="running",
                           host=host, pid=pid, heartbeat_at=now)  # fmt: skip
            run_id = insert(conn, "crawlrun", new.model_dump(exclude={"id"}), returning="id")
        execute(conn, "UPDATE crawllock SET run_id = %(id)s WHERE source = %(source)s", id=run_id, source=source)
        run = _run(conn, "id = %(id)s", id=run_id)
    assert run is not None
    return Started(run, resumed)


def finish(engine: Engine, run: CrawlRun, status: str, error: str | None = None,
           summary: RunSummary | None = None) -> None:  # fmt: skip
    """Close the run (``stopped``: at --max-pages, resumed by the next start) and release the lock; with
    ``summary``, its errors are added to the run's (a resumed run keeps those of its earlier starts)."""
    values: dict = {"status": status, "last_error": error, "heartbeat_at": utcnow()}
    if status == "ok":
        values.update(finished_at=utcnow(), cursor=None)
    added = 0  # errors added to the run's count, which its earlier starts began
    with engine.begin() as conn:
        if summary is not None:
            kept = execute(conn, "SELECT first_errors FROM crawlrun WHERE id = %(id)s", id=run.id).scalar()
            notes = json.loads(kept) if kept else []
            notes += [asdict(n) for n in summary.first_errors][: max(0, MAX_ERRORS - len(notes))]
            values.update(first_errors=json.dumps(notes) if notes else None, **summary.run_counts())
            added = summary.errors
        assigned = ", ".join(f"{name} = %({name})s" for name in values)
        execute(conn, f"UPDATE crawlrun SET {assigned}, errors = errors + %(added)s WHERE id = %(id)s", values,
                added=added, id=run.id)  # fmt: skip
        execute(
            conn, "DELETE FROM crawllock WHERE source = %(source)s AND pid = %(pid)s", source=run.source, pid=run.pid
        )


def last_successful(engine: Engine, source: str) -> CrawlRun | None:
    with engine.connect() as conn:
        row = execute(conn, "SELECT * FROM crawlrun WHERE source = %(source)s AND status = 'ok' "
                      "ORDER BY started_at DESC LIMIT 1", source=source).first()  # fmt: skip
    return as_record(CrawlRun, row) if row is not None else None
