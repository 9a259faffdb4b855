"""Team mode on a real PostgreSQL: builds queued in the registry's database (procrastinate), run by worker
processes, de-duplicated, retried, recovered after a worker is killed -9, and the periodic crawl deferred once
per tick across workers. Workers build from a fake Civitai (B) with local A and C on "shared storage"."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from advisor import team
from crawler import registry
from merge.engine import merge
from tests import pg
from tests.conftest import ROOT, cli_env, run_cli
from tests.team_world import FAST, world


@pytest.fixture
def team_world(tmp_path, monkeypatch, request):
    """A PostgreSQL registry crawled from a fake Civitai of ``n`` tiny SD 1.5 models (marker ``team(n=...)``),
    their files on fake storage, and the official pair as local files (what every worker reads)."""
    n = getattr(request.node.get_closest_marker("team"), "kwargs", {}).get("n", 3)
    with pg.fresh_database() as db, world(tmp_path, monkeypatch, db, n, FAST) as made:
        yield made


def _worker(world, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advisor", "worker", "--out", str(world["out"]), *extra],
                            cwd=ROOT, env=world["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := predicate():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(*workers: subprocess.Popen) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait(5)


def _build_jobs(db) -> list:
    return [j for j in team.jobs(db=db) if j.task == "build"]


def _enqueue(world, queries=None):
    return team.enqueue(queries or world["queries"], db=world["db"], inpaint=str(world["a"]), base=str(world["c"]))


def test_team_mode_on_sqlite_says_it_needs_postgresql_and_what_to_use(tmp_path):
    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "r.db"))
    for args in (["build", "civitai:1", "--enqueue"], ["jobs"], ["worker"]):
        done = run_cli(*args, *([] if args[0] == "worker" else ["--json"]), env=env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        text = done.stdout + done.stderr
        assert "needs a PostgreSQL registry" in text and "scan --build" in text and "build --missing" in text
    assert json.loads(run_cli("jobs", "--json", env=env).stdout)["error"]["code"] == "needs-postgres"


def test_the_same_build_enqueued_twice_is_one_job(team_world):
    first = _enqueue(team_world)
    again = _enqueue(team_world, team_world["queries"][:1])
    assert [q.already for q in first] == [False] * team_world["n"] and again[0].already
    assert again[0].job_id == first[0].job_id
    builds = _build_jobs(team_world["db"])
    assert len(builds) == team_world["n"] and {j.status for j in builds} == {"todo"}
    assert builds[0].args["query"] == "civitai:700001" and builds[0].args["inpaint"] == str(team_world["a"])
    listed = json.loads(run_cli("jobs", "--json", env=team_world["env"]).stdout)["jobs"]
    assert [j["id"] for j in listed if j["task"] == "build"] == [j.id for j in builds]


def test_a_worker_builds_the_queue_and_sigterm_lets_the_running_build_finish(team_world):
    storage = team_world["storage"]
    held = storage.blobs[next(iter(storage.blobs))]
    held.hold_after = len(held.data) // 2  # the first build stalls mid-download
    queued = run_cli("build", *team_world["queries"], "--enqueue", "-a", str(team_world["a"]), "-c",
                     str(team_world["c"]), "--json", env=team_world["env"])  # fmt: skip
    assert [q["already"] for q in json.loads(queued.stdout)["queued"]] == [False] * team_world["n"]
    worker = _worker(team_world)
    try:
        assert storage.holding.wait(60), worker.stderr
        worker.send_signal(signal.SIGTERM)  # while the build downloads
        time.sleep(0.5)
        storage.release.set()
        assert worker.wait(60) == 0, worker.stderr.read()
    finally:
        storage.release.set()
        _stop(worker)
    statuses = [j.status for j in _build_jobs(team_world["db"])]
    assert statuses[0] == "succeeded" and "doing" not in statuses  # the running one finished, no other began
    worker = _worker(team_world)
    try:
        _wait(lambda: all(j.status == "succeeded" for j in _build_jobs(team_world["db"])), 120, "the queue")
    finally:
        _stop(worker)
    outs = sorted(p.name.split("-inpainting.v")[0] for p in team_world["out"].iterdir() if p.name[0] != ".")
    assert outs == sorted(f"teamModel{700001 + i}" for i in range(team_world["n"]))


def test_a_build_that_keeps_failing_stops_after_its_retries_with_its_error(team_world):
    missing = team_world["tmp"] / "gone-C.safetensors"
    team.enqueue(team_world["queries"][:1], db=team_world["db"], inpaint=str(team_world["a"]), base=str(missing))
    worker = _worker(team_world)
    try:
        job = _wait(lambda: next((j for j in _build_jobs(team_world["db"]) if j.status == "failed"), None), 90,
                    "the job to fail")  # fmt: skip
    finally:
        _stop(worker)
    assert job.attempts == 3 and "gone-C.safetensors" in (job.error or "")  # 3 runs, then it stopped
    shown = run_cli("jobs", "--status", "failed", env=team_world["env"]).stdout
    assert "gone-C.safetensors" in shown and str(job.id) in shown
    run_cli("jobs", "retry", str(job.id), env=team_world["env"])
    assert next(j for j in _build_jobs(team_world["db"]) if j.id == job.id).status == "todo"
    run_cli("jobs", "cancel", str(job.id), env=team_world["env"])
    assert next(j for j in _build_jobs(team_world["db"]) if j.id == job.id).status == "cancelled"


def test_the_periodic_crawl_is_deferred_once_per_tick_across_two_workers(team_world):
    env = {**team_world["env"], "INPAINT_ADVISOR_CRAWL_CRON": "* * * * * */2"}  # every 2 s (a test's period)
    workers = [subprocess.Popen([sys.executable, "-m", "advisor", "worker", "--out", str(team_world["out"]),
                                 "--crawl-every", "1h"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    try:
        crawls = _wait(lambda: (c := [j for j in team.jobs(db=team_world["db"]) if j.task == "crawl"]) and
                       len({j.args["timestamp"] for j in c}) >= 3 and c, 90, "three crawl ticks")  # fmt: skip
    finally:
        _stop(*workers)
    ticks = [j.args["timestamp"] for j in crawls]
    assert len(ticks) == len(set(ticks))  # one job per tick, not one per worker


@pytest.mark.team(n=int(os.environ.get("INPAINT_ADVISOR_LOAD_BUILDS", "24")))
def test_four_workers_one_killed_9_mid_build_lose_nothing(team_world):
    """The load and fault test: every job ends done, each output registered once and correct, nothing under a
    final name incomplete; the killed worker's job is picked up again after the heartbeat timeout."""
    world, n = team_world, team_world["n"]
    storage = world["storage"]
    victim_version = next(iter(storage.blobs))
    held = storage.blobs[victim_version]
    held.hold_after = len(held.data) // 2  # one build stops mid-download: its worker is the one killed
    _enqueue(world)
    start = time.monotonic()
    workers = [_worker(world) for _ in range(4)]
    try:
        assert storage.holding.wait(120), "no build reached the held download"
        held_job = _wait(lambda: next((j for j in _build_jobs(world["db"]) if j.status == "doing"
                                       and j.args["query"] == "civitai:700001"), None), 30, "the held job")
        pid = int(held_job.worker.rsplit(":", 1)[1])
        victim = next(w for w in workers if w.pid == pid)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait(10)
        storage.release.set()
        workers[workers.index(victim)] = _worker(world)  # restarted
        _wait(lambda: next(j for j in _build_jobs(world["db"]) if j.id == held_job.id).status == "succeeded", 120,
              "the killed worker's job")  # fmt: skip
        recovered = time.monotonic() - killed_at
        _wait(lambda: all(j.status == "succeeded" for j in _build_jobs(world["db"])), 600, "every job")
        elapsed = time.monotonic() - start
    finally:
        storage.release.set()
        _stop(*workers)
    print(f"\n{n} builds, 4 workers: {n / elapsed:.1f} jobs/s; the killed worker's job done {recovered:.1f} s after "
          "the kill")
    ranged = [r for r in storage.requests if r["path"].startswith(f"/blob/{victim_version}") and r["range"]]
    assert ranged, "the retried build did not resume its download"
    outs = sorted(p for p in world["out"].iterdir() if not p.name.startswith("."))  # the outputs' locks aside
    assert [p.name.split("-inpainting.v")[0] for p in outs] == sorted(f"teamModel{700001 + i}" for i in range(n))
    engine = registry.connect(world["db"])
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT path, sha256 FROM artifact WHERE kind = 'built'").all()
    assert len(rows) == n and len({r[0] for r in rows}) == n  # each output registered exactly once
    recorded = dict(rows)
    by_hand = world["tmp"] / "by-hand.safetensors"  # the killed worker's build, against the merge done here
    merge(world["a"], world["tmp"] / "made" / "b0.safetensors", world["c"], by_hand)
    x, y = load_file(next(world["out"].glob("teamModel700001-inpainting.v*.safetensors"))), load_file(by_hand)
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    for p in outs:  # complete and what the registry says
        assert hashlib.sha256(p.read_bytes()).hexdigest().upper() == recorded[str(p.resolve())].upper()
        with safe_open(str(p), "pt") as f:
            assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").shape[1] == 9


def test_build_missing_enqueue_queues_the_most_used_models_without_a_release(team_world):
    done = run_cli("build", "--missing", "--limit", "2", "--enqueue", "--json", env=team_world["env"])
    queued = json.loads(done.stdout)["queued"]
    assert done.returncode == 0 and len(queued) == 2 and all(q["job_id"] for q in queued)
    assert {q["query"] for q in queued} <= set(team_world["queries"])
    assert sorted(j.args["query"] for j in _build_jobs(team_world["db"])) == sorted(q["query"] for q in queued)
    human = run_cli("build", "--missing", "--limit", "2", "--enqueue", env=team_world["env"]).stdout
    assert human.count("already queued (job ") == 2  # the same builds: the same jobs
