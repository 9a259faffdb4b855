"""Crawl runs: one writer per source at a time, and resuming where a killed or failed run stopped."""

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from crawler.registry.schema import CrawlLock, CrawlRun
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


def start(
    engine: Engine, source: str, mode: str, *, since: datetime | None = None, period: str | None = None
) -> Started:
    """Take the source's lock, then resume its last stopped, interrupted or failed run or open a new one."""
    host, pid, now = socket.gethostname(), os.getpid(), utcnow()
    for _ in range(3):
        try:
            with Session(engine) as session:
                session.add(CrawlLock(source=source, run_id=0, host=host, pid=pid, heartbeat_at=now))
                session.commit()
            break
        except IntegrityError:
            with Session(engine) as session:
                lock = session.get(CrawlLock, source)
                if lock is None:
                    continue
                if not _is_stale(lock, host, now):
                    raise CrawlLocked(lock) from None
                # Compare-and-delete: only the abandoned holder's row, so two starters cannot both take over.
                session.execute(
                    delete(CrawlLock).where(col(CrawlLock.source) == source, col(CrawlLock.pid) == lock.pid)
                )
                session.commit()
    else:
        raise RuntimeError(f"could not take the {source} crawl lock")

    with Session(engine) as session:
        session.execute(
            update(CrawlRun)
            .where(col(CrawlRun.source) == source, col(CrawlRun.status) == "running")
            .values(status="interrupted", last_error="the process stopped without finishing (killed?)")
        )
        last = session.exec(
            select(CrawlRun).where(CrawlRun.source == source).order_by(col(CrawlRun.id).desc()).limit(1)
        ).first()
        resumed = False
        if last is not None and last.status in RESUMABLE and last.cursor and last.mode == mode:
            resumed = True
            run = last
            run.status, run.host, run.pid, run.heartbeat_at, run.last_error = "running", host, pid, now, None
        else:
            run = CrawlRun(
                source=source,
                mode=mode,
                status="running",
                started_at=now,
                heartbeat_at=now,
                host=host,
                pid=pid,
                since=since,
                period=period,
            )
        session.add(run)
        session.commit()
        session.refresh(run)
        session.execute(update(CrawlLock).where(col(CrawlLock.source) == source).values(run_id=run.id))
        session.commit()
        session.refresh(run)
        session.expunge(run)
    return Started(run, resumed)


def finish(engine: Engine, run: CrawlRun, status: str, error: str | None = None,
           summary: RunSummary | None = None) -> None:  # fmt: skip
    """Close the run (``stopped``: at --max-pages, resumed by the next start) and release the lock; with
    ``summary``, its errors are added to the run's (a resumed run keeps those of its earlier starts)."""
    with Session(engine) as session:
        values: dict = {"status": status, "last_error": error, "heartbeat_at": utcnow()}
        if status == "ok":
            values.update(finished_at=utcnow(), cursor=None)
        if summary is not None:
            kept = session.exec(select(CrawlRun.first_errors).where(col(CrawlRun.id) == run.id)).first()
            notes = json.loads(kept) if kept else []
            notes += [asdict(n) for n in summary.first_errors][: max(0, MAX_ERRORS - len(notes))]
            values.update(errors=col(CrawlRun.errors) + summary.errors, first_errors=json.dumps(notes) if notes
                          else None, **summary.run_counts())  # fmt: skip
        session.execute(update(CrawlRun).where(col(CrawlRun.id) == run.id).values(**values))
        session.execute(delete(CrawlLock).where(col(CrawlLock.source) == run.source, col(CrawlLock.pid) == run.pid))
        session.commit()


def last_successful(engine: Engine, source: str) -> CrawlRun | None:
    with Session(engine) as session:
        return session.exec(
            select(CrawlRun)
            .where(CrawlRun.source == source, CrawlRun.status == "ok")
            .order_by(col(CrawlRun.started_at).desc())
            .limit(1)
        ).first()
