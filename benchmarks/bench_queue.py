#!/usr/bin/env python3
"""Team mode's build queue on a real PostgreSQL, against the naive way in the same run.

    python benchmarks/bench_queue.py --db postgresql+psycopg://postgres@127.0.0.1:55432/postgres \
        [--builds 200] [--workers 4]

N tiny real-layout SD 1.5 builds (B from a local fake Civitai and signed storage, A and C from a fake Hub), each
in a fresh database on that server (never the one named):
- naive: the same builds one after another in one process (what `build --missing` does in the foreground);
- the queue: N jobs enqueued, W `inpaint-advisor worker` processes; jobs/s from the first enqueue to the last
  job done;
- recovery: the same with one worker killed -9 while its build downloads, and restarted; the time from the
  kill to that job done (heartbeats every 0.5 s, a job stalled after 3 s: the test timings; the defaults are
  10 s and 60 s).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import pytest

    from advisor.build import build
    from advisor.team import worker as team
    from tests.pg import fresh_database
    from tests.team_world import FAST, world

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="a PostgreSQL server URL (a fresh database is made on it)")
    ap.add_argument("--builds", type=int, default=200)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    n, w = args.builds, args.workers

    def run(kill: bool) -> tuple[float, float | None]:
        with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp, \
                fresh_database(args.db, "inpaint_advisor_bench") as db, \
                world(Path(tmp), mp, db, n, FAST) as wd:  # fmt: skip
            storage = wd["storage"]
            held = storage.blobs[next(iter(storage.blobs))]
            if kill:
                held.hold_after = len(held.data) // 2
            start = time.monotonic()
            team.enqueue(wd["queries"], db=db)  # the workers fetch the official pair (the fake Hub's A and C)
            procs = [_worker(wd) for _ in range(w)]
            recovered = None
            try:
                if kill:
                    storage.holding.wait(120)
                    job = _until(lambda: next((j for j in team.jobs(db=db) if j.status == "doing" and j.worker
                                               and j.args.get("asked") == wd["queries"][0]), None))  # fmt: skip
                    victim = next(p for p in procs if p.pid == int(job.worker.rsplit(":", 1)[1]))
                    victim.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    victim.wait(10)
                    storage.release.set()
                    procs[procs.index(victim)] = _worker(wd)
                    _until(lambda: next(j for j in team.jobs(db=db) if j.id == job.id).status == "succeeded")
                    recovered = time.monotonic() - killed
                _until(lambda: all(j.status == "succeeded" for j in team.jobs(db=db) if j.task == "build"), 1800)
                return time.monotonic() - start, recovered
            finally:
                storage.release.set()
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                for p in procs:
                    p.wait(60)

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp, \
            fresh_database(args.db, "inpaint_advisor_bench") as db, world(Path(tmp), mp, db, n) as wd:  # fmt: skip
        start = time.monotonic()
        for q in wd["queries"]:
            build(q, out=wd["out"], inpaint=str(wd["a"]), base=str(wd["c"]), db=db)
        naive = time.monotonic() - start
    queued, _ = run(kill=False)
    with_kill, recovered = run(kill=True)
    print(f"{n} builds: naive, one after another in one process: {naive:.1f} s ({n / naive:.1f} builds/s)")
    print(f"queue, {w} workers: {queued:.1f} s ({n / queued:.1f} jobs/s, {queued / naive:.2f}x the naive time)")
    print(f"queue, {w} workers, one killed -9 mid-download and restarted: {with_kill:.1f} s "
          f"({n / with_kill:.1f} jobs/s); its job done {recovered:.1f} s after the kill")


def _worker(wd) -> subprocess.Popen:
    return subprocess.Popen([*wd["worker"], "worker", "--out", str(wd["out"])], cwd=ROOT, env=wd["env"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def _until(predicate, timeout: float = 120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := predicate():
            return got
        time.sleep(0.1)
    raise SystemExit("timed out")


if __name__ == "__main__":
    main()
