"""Crawl runs: one writer per source at a time, and resuming where a killed or failed run stopped."""

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from crawler.registry.schema import CRAWL_LOCK, CRAWL_RUN, CrawlLock, CrawlRun
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


def _run(conn: Connection, *where) -> CrawlRun | None:
    """The newest run matching ``where``, as a detached record (SQLModel describes the table; Core reads it)."""
    row = conn.execute(select(CRAWL_RUN).where(*where).order_by(CRAWL_RUN.c.id.desc()).limit(1)).first()
    return CrawlRun(**row._mapping) if row is not None else None


def _take_lock(engine: Engine, source: str, host: str, pid: int, now: datetime) -> None:
    for _ in range(3):
        try:
            with engine.begin() as conn:
                conn.execute(insert(CRAWL_LOCK).values(source=source, run_id=0, host=host, pid=pid,
                                                                 heartbeat_at=now))  # fmt: skip
            return
        except IntegrityError:
            with engine.begin() as conn:
                row = conn.execute(select(CRAWL_LOCK).where(CRAWL_LOCK.c.source == source)).first()
                if row is None:
                    continue
                lock = CrawlLock(**row._mapping)
                if not _is_stale(lock, host, now):
                    raise CrawlLocked(lock) from None
                # Compare-and-delete: only the abandoned holder's row, so two starters cannot both take over.
                conn.execute(delete(CRAWL_LOCK).where(CRAWL_LOCK.c.source == source, CRAWL_LOCK.c.pid == lock.pid))
    raise RuntimeError(f"could not take the {source} crawl lock")


def start(
    engine: Engine, source: str, mode: str, *, since: datetime | None = None, period: str | None = None
) -> Started:
    """Take the source's lock, then resume its last stopped, interrupted or failed run or open a new one."""
    host, pid, now = socket.gethostname(), os.getpid(), utcnow()
    _take_lock(engine, source, host, pid, now)
    runs = CRAWL_RUN
    with engine.begin() as conn:
        killed = "the process stopped without finishing (killed?)"
        conn.execute(update(CRAWL_RUN).where(CRAWL_RUN.c.source == source, CRAWL_RUN.c.status == "running")
                     .values(status="interrupted", last_error=killed))  # fmt: skip
        last = _run(conn, CRAWL_RUN.c.source == source)
        resumed = last is not None and last.status in RESUMABLE and bool(last.cursor) and last.mode == mode
        taken = {"status": "running", "host": host, "pid": pid, "heartbeat_at": now}
        if resumed:
            assert last is not None
            conn.execute(update(CRAWL_RUN).where(CRAWL_RUN.c.id == last.id).values(**taken, last_error=None))
            run_id = last.id
        else:
            made = conn.execute(insert(runs).values(source=source, mode=mode, started_at=now, since=since,
                                                    period=period, **taken))  # fmt: skip
            assert made.inserted_primary_key is not None
            run_id = made.inserted_primary_key[0]
        conn.execute(update(CRAWL_LOCK).where(CRAWL_LOCK.c.source == source).values(run_id=run_id))
        run = _run(conn, CRAWL_RUN.c.id == run_id)
    assert run is not None
    return Started(run, resumed)


def finish(engine: Engine, run: CrawlRun, status: str, error: str | None = None,
           summary: RunSummary | None = None) -> None:  # fmt: skip
    """Close the run (``stopped``: at --max-pages, resumed by the next start) and release the lock; with
    ``summary``, its errors are added to the run's (a resumed run keeps those of its earlier starts)."""
    values: dict = {"status": status, "last_error": error, "heartbeat_at": utcnow()}
    if status == "ok":
        values.update(finished_at=utcnow(), cursor=None)
    with engine.begin() as conn:
        if summary is not None:
            kept = conn.execute(select(CRAWL_RUN.c.first_errors).where(CRAWL_RUN.c.id == run.id)).scalar()
            notes = json.loads(kept) if kept else []
            notes += [asdict(n) for n in summary.first_errors][: max(0, MAX_ERRORS - len(notes))]
            values.update(errors=CRAWL_RUN.c.errors + summary.errors, first_errors=json.dumps(notes) if notes
                          else None, **summary.run_counts())  # fmt: skip
        conn.execute(update(CRAWL_RUN).where(CRAWL_RUN.c.id == run.id).values(**values))
        conn.execute(delete(CRAWL_LOCK).where(CRAWL_LOCK.c.source == run.source, CRAWL_LOCK.c.pid == run.pid))


def last_successful(engine: Engine, source: str) -> CrawlRun | None:
    with engine.connect() as conn:
        ok = (CRAWL_RUN.c.source == source, CRAWL_RUN.c.status == "ok")
        row = conn.execute(select(CRAWL_RUN).where(*ok).order_by(CRAWL_RUN.c.started_at.desc())
                           .limit(1)).first()  # fmt: skip
    return CrawlRun(**row._mapping) if row is not None else None
