"""Team mode on a real PostgreSQL: builds queued in the registry's database (procrastinate), resolved and
de-duplicated when queued, run by worker processes that print one line per job, failed at once or retried by
their error, recovered after a worker is killed -9 (and after its worker row is pruned), and the periodic crawl
deferred once per tick across workers. Workers build from a fake Civitai (B) and the official pair on a fake
Hub (A and C)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from advisor.team import runtime
from advisor.team import worker as team
from crawler import registry
from merge.engine import merge
from tests import pg
from tests.conftest import ROOT, cli_env, run_cli
from tests.team_world import A_FILE, FAST, world

SECRET = "sekrit-token-4242"  # a configured token: no worker line and no stored error may show it


@pytest.fixture
def team_world(tmp_path, monkeypatch, request):
    """A PostgreSQL registry crawled from a fake Civitai of ``n`` tiny SD 1.5 models (marker ``team(n=...)``),
    their files on fake storage, and the official pair on a fake Hub (what every worker fetches)."""
    n = getattr(request.node.get_closest_marker("team"), "kwargs", {}).get("n", 3)
    with pg.fresh_database() as db, world(tmp_path, monkeypatch, db, n, FAST) as made:
        yield made


def _worker(world, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*world["worker"], "worker", "--out", str(world["out"]), *extra], cwd=ROOT,
                            env=env or world["env"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if got := predicate():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(*workers: subprocess.Popen) -> list[str]:
    """Each worker stopped (SIGTERM, then SIGKILL), and what it wrote on stderr."""
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    said = []
    for w in workers:
        try:
            said.append(w.communicate(timeout=30)[1] or "")
        except subprocess.TimeoutExpired:
            w.kill()
            said.append(w.communicate(timeout=5)[1] or "")
    return said


def _build_jobs(db) -> list:
    return [j for j in team.jobs(db=db) if j.task == "build"]


def _job(db, job_id: int):
    return next(j for j in team.jobs(db=db) if j.id == job_id)


def _enqueue(world, queries=None):
    return team.enqueue(queries or world["queries"], db=world["db"])


def _version(world, model: str) -> str:
    """The Civitai version id the registry holds for ``model`` (civitai:ID)."""
    reg = registry.open(world["db"])
    with reg.engine.connect() as conn:
        vid = conn.exec_driver_sql("SELECT id FROM version WHERE model_id = %s", (model,)).scalar_one()
    return vid.rsplit(":v", 1)[1]


def test_team_mode_on_sqlite_says_it_needs_postgresql_and_what_to_use(tmp_path):
    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "r.db"))
    for args in (["build", "civitai:1", "--enqueue"], ["jobs"], ["worker"]):
        done = run_cli(*args, *([] if args[0] == "worker" else ["--json"]), env=env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        text = done.stdout + done.stderr
        assert "needs a PostgreSQL registry" in text and "scan --build" in text and "build --missing" in text
        assert "worker " not in done.stderr, done.stderr  # refused before a worker says it has started
    assert json.loads(run_cli("jobs", "--json", env=env).stdout)["error"]["code"] == "needs-postgres"
    folder = run_cli("jobs", "--db", str(tmp_path), "--json", env=env)  # a folder is no SQLite registry either
    error = json.loads(folder.stdout)["error"]
    assert folder.returncode == 2 and error["message"].endswith(f"{tmp_path} is a folder, not a registry")


def test_every_build_error_code_is_either_permanent_or_transient():
    codes = json.loads((ROOT / "data" / "error_codes.json").read_text())["codes"]
    builds = {c["code"] for c in codes if c["group"] in ("any command", "registry", "merge and build", "build")}
    assert not team.PERMANENT & team.TRANSIENT
    assert builds <= team.PERMANENT | team.TRANSIENT, sorted(builds - team.PERMANENT - team.TRANSIENT)
    assert {"not-found", "no-file", "login-wall", "exists", "is-a-base", "no-build-route", "hash-mismatch",
            "unverified"} <= team.PERMANENT and {"network", "disk", "download-failed"} <= team.TRANSIENT
    assert team.is_transient("http-error", "B: x: HTTP 503: busy") and team.is_transient("http-error", "HTTP 429")
    assert not team.is_transient("http-error", "B: x: HTTP 400: bad request")
    assert not team.is_transient("not-found") and team.is_transient("some-code-nobody-made")
    assert runtime.retry_wait(0) is not None and runtime.retry_wait(registry.JOB_ATTEMPTS - 1) is None  # ATTEMPTS runs


def test_the_same_build_enqueued_twice_is_one_job(team_world):
    first = _enqueue(team_world)
    again = _enqueue(team_world, team_world["queries"][:1])
    assert [q.already for q in first] == [False] * team_world["n"] and again[0].already
    assert again[0].job_id == first[0].job_id
    builds = _build_jobs(team_world["db"])
    assert len(builds) == team_world["n"] and {j.status for j in builds} == {"todo"}
    vid = _version(team_world, "civitai:700001")
    assert builds[0].args["query"] == f"civitai:700001@{vid}" == first[0].target  # the resolved model and version
    assert builds[0].args["asked"] == "civitai:700001" and "inpaint" not in builds[0].args
    listed = json.loads(run_cli("jobs", "--json", env=team_world["env"]).stdout)["jobs"]
    assert [j["id"] for j in listed if j["task"] == "build"] == [j.id for j in builds]


def test_a_model_by_name_and_by_id_is_one_job(team_world):
    vid = _version(team_world, "civitai:700002")
    done = run_cli("build", "Team Model 700002", "civitai:700002", f"civitai:700002@{vid}", "--enqueue", "--json",
                   env=team_world["env"])  # fmt: skip
    queued = json.loads(done.stdout)["queued"]
    assert done.returncode == 0 and [q["already"] for q in queued] == [False, True, True], queued
    assert len({q["job_id"] for q in queued}) == 1 and {q["target"] for q in queued} == {f"civitai:700002@{vid}"}
    assert queued[0]["name"] == "Team Model 700002"
    again = run_cli("build", "civitai:700002", "--enqueue", "-m", "0.5", "--json", env=team_world["env"])
    assert not json.loads(again.stdout)["queued"][0]["already"]  # another M: another recipe, another job
    assert len(_build_jobs(team_world["db"])) == 2


def test_enqueue_queues_nothing_when_a_query_matches_nothing_or_names_a_file_only_this_host_has(team_world):
    env = team_world["env"]
    done = run_cli("build", "civitai:700001", "zzqx nothing like it", "--enqueue", "--json", env=env)
    error = json.loads(done.stdout)["error"]
    assert done.returncode == 1 and error["code"] == "not-found", done.stdout
    assert "zzqx nothing like it" in error["message"] and "nothing queued" in error["message"]
    human = run_cli("build", "zzqx nothing like it", "--enqueue", env=env)
    assert human.returncode == 1 and "zzqx nothing like it" in human.stderr
    local = team_world["tmp"] / "mine.safetensors"  # a checkpoint the registry does not know
    local.write_bytes((team_world["tmp"] / "made" / "b0.safetensors").read_bytes()[:-8] + b"\0" * 8)
    mine = run_cli("build", str(local), "--enqueue", "--json", env=env)
    assert mine.returncode == 2 and "workers cannot read it" in json.loads(mine.stdout)["error"]["message"]
    for flag in ("-a", "-c"):  # files on this host: refused, with what a queued build uses instead
        given = run_cli("build", "civitai:700001", "--enqueue", flag, str(team_world["a"]), "--json", env=env)
        error = json.loads(given.stdout)["error"]
        assert given.returncode == 2 and error["code"] == "usage" and "official A and C" in error["message"]
    for flag in ("--prepare-pair", "--allow-nonfinite"):  # asks a queued build cannot carry: refused, not dropped
        asked = run_cli("build", "civitai:700001", "--enqueue", flag, "--json", env=env)
        error = json.loads(asked.stdout)["error"]
        assert asked.returncode == 2 and error["code"] == "usage" and error["message"].startswith(flag)
    assert _build_jobs(team_world["db"]) == []  # nothing queued by any of them


def test_a_worker_says_one_line_per_job_and_a_permanent_failure_is_not_retried(team_world):
    """A success and a permanent failure (a FLUX model: no build route), each a start line and an end line, no
    traceback, no secret; the failure fails at once; `jobs` fits 80 columns; retry and cancel say why not."""
    db, env = team_world["db"], {**team_world["env"], "CIVITAI_API_TOKEN": SECRET}
    reg = registry.open(db)
    with reg.engine.begin() as conn:  # a stranger's name that echoes the token, on a model no merge can serve
        conn.exec_driver_sql(f"UPDATE model SET name = 'Team Model {SECRET}', family = 'flux1' "
                             "WHERE id = 'civitai:700002'")  # fmt: skip
        conn.exec_driver_sql("UPDATE version SET family = 'flux1', base_model = 'Flux.1 D' "
                             "WHERE model_id = 'civitai:700002'")  # fmt: skip
    ok, bad = _enqueue(team_world, team_world["queries"][:2])
    worker = _worker(team_world, env=env)
    try:
        _wait(lambda: {j.status for j in _build_jobs(db)} <= {"succeeded", "failed"}, 120, "both jobs to end")
    finally:
        said = _stop(worker)[0]
    done, failed = _job(db, ok.job_id), _job(db, bad.job_id)
    assert done.status == "succeeded" and failed.status == "failed"
    assert failed.attempts == 1 and failed.error.startswith("no-build-route: no build route for Team Model ***")
    lines = said.splitlines()
    assert "Traceback" not in said and SECRET not in said, said
    assert re.fullmatch(r"\S+ worker \S+:\d+: builds into .*, 1 at a time", lines[0]), lines
    assert re.fullmatch(r"\S+ worker \S+:\d+: stopped", lines[-1]), lines
    ours = [line.split(" ", 1)[1] for line in lines[1:-1]]
    assert len(ours) == 4, said  # a start and an end for each job, nothing else
    assert f"job {ok.job_id} start: {ok.target} (Team Model 700001)" in ours
    assert any(re.fullmatch(rf"job {ok.job_id} done in \d+\.\d s: .*/teamModel700001-inpainting\.v\w+\.safetensors",
                            line) for line in ours), ours  # fmt: skip
    assert f"job {bad.job_id} start: {bad.target} (Team Model ***)" in ours
    assert any(re.fullmatch(rf"job {bad.job_id} failed \(no-build-route\) in \d+\.\d s: no build route for Team "
                            r"Model \*\*\*: .+", line) for line in ours), ours  # fmt: skip

    narrow = {**team_world["env"], "COLUMNS": "80"}
    table = run_cli("jobs", env=narrow).stdout.splitlines()
    assert max(len(line) for line in table) <= 80, table
    assert len(table) == 3 and any(f"{bad.job_id}" in line and "no-build-route: no build" in line for line in table)
    shown = run_cli("jobs", "show", str(bad.job_id), env=narrow)
    assert shown.returncode == 0 and "Team Model ***" in shown.stdout and "started" in shown.stdout
    tail = " ".join(failed.error.split()[-3:])  # the end of the error: cut in the table, whole in `jobs show`
    assert tail not in "\n".join(table) and tail in " ".join(shown.stdout.split()), (tail, shown.stdout)
    detail = json.loads(run_cli("jobs", "show", str(bad.job_id), "--json", env=narrow).stdout)
    beyond = run_cli("jobs", "show", str(2**70), "--json", env=narrow)
    assert beyond.returncode == 1 and json.loads(beyond.stdout)["error"]["code"] == "not-found", beyond.stdout
    assert detail["error"] == failed.error and [e["type"] for e in detail["events"]][-1] == "failed"

    for verb in ("retry", "cancel"):  # a job that is not there, and one that succeeded: why not, never a DB error
        missing = run_cli("jobs", verb, "987654", env=narrow)
        assert missing.returncode == 1 and "no job 987654" in missing.stderr, missing.stderr
        beyond = run_cli("jobs", verb, str(2**70), env=narrow)  # no bigint holds it: still "no job"
        assert beyond.returncode == 1 and f"no job {2**70}" in beyond.stderr, beyond.stderr
        assert json.loads(run_cli("jobs", verb, "987654", "--json", env=narrow).stdout)["error"]["code"] == "not-found"
        finished = run_cli("jobs", verb, str(ok.job_id), env=narrow)
        assert finished.returncode == 1 and "succeeded" in finished.stderr, finished.stderr
        assert "Database error" not in missing.stderr + finished.stderr
    assert _job(db, ok.job_id).status == "succeeded"
    cancelled = run_cli("jobs", "cancel", str(bad.job_id), env=narrow)
    assert cancelled.returncode == 1 and "has ended (failed)" in cancelled.stderr


def test_a_transient_failure_is_retried_then_stops_with_its_error(team_world):
    storage, db = team_world["storage"], team_world["db"]
    blob = storage.blobs[_version(team_world, "civitai:700001")]
    blob.status = 503  # the storage is in trouble for as long as it takes
    (queued,) = _enqueue(team_world, team_world["queries"][:1])
    worker = _worker(team_world)
    try:
        job = _wait(lambda: next((j for j in _build_jobs(db) if j.status == "failed"), None), 90, "the job to fail")
    finally:
        said = _stop(worker)[0]
    assert job.id == queued.job_id and job.attempts == registry.JOB_ATTEMPTS and job.error.startswith("network: ")
    assert said.count(f"job {job.id} failed (network)") == registry.JOB_ATTEMPTS, said
    assert f"runs again in 1 s (attempt 2/{registry.JOB_ATTEMPTS})" in said and "Traceback" not in said
    shown = run_cli("jobs", "--status", "failed", env=team_world["env"]).stdout
    assert "network" in shown and str(job.id) in shown
    assert run_cli("jobs", "retry", str(job.id), env=team_world["env"]).returncode == 0
    assert _job(db, job.id).status == "todo"
    assert run_cli("jobs", "cancel", str(job.id), env=team_world["env"]).returncode == 0
    assert _job(db, job.id).status == "cancelled"
    again = run_cli("jobs", "retry", str(job.id), env=team_world["env"])
    assert again.returncode == 1 and "was cancelled" in again.stderr and "--enqueue" in again.stderr


def test_a_worker_builds_the_queue_and_sigterm_lets_the_running_build_finish(team_world):
    storage = team_world["storage"]
    held = storage.blobs[_version(team_world, "civitai:700001")]
    held.hold_after = len(held.data) // 2  # the first build stalls mid-download
    queued = run_cli("build", *team_world["queries"], "--enqueue", "--json", env=team_world["env"])
    assert [q["already"] for q in json.loads(queued.stdout)["queued"]] == [False] * team_world["n"]
    worker = _worker(team_world)
    try:
        assert storage.holding.wait(60)
        worker.send_signal(signal.SIGTERM)  # while the build downloads
        time.sleep(0.5)
        storage.release.set()
        assert worker.wait(60) == 0
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


@pytest.mark.team(n=1)
def test_a_job_whose_worker_was_killed_and_pruned_is_picked_up_again(team_world):
    """procrastinate#1518: a worker killed mid-job, then pruned (its row deleted by a worker that starts after
    its heartbeats went stale) leaves a running job whose worker is gone: the sweep queues it again, and the
    restarted worker builds it."""
    world, db = team_world, team_world["db"]
    storage = world["storage"]
    held = storage.blobs[_version(world, "civitai:700001")]
    held.hold_after = len(held.data) // 2
    (queued,) = _enqueue(world)
    first, second = _worker(world), None
    try:
        assert storage.holding.wait(90), "no build reached the held download"
        reg = registry.open(db)
        with reg.engine.connect() as conn:
            dead = conn.exec_driver_sql("SELECT worker_id FROM procrastinate_jobs WHERE id = %s",
                                        (queued.job_id,)).scalar_one()  # fmt: skip
        busy = run_cli("jobs", "retry", str(queued.job_id), env=world["env"])  # its worker is alive: no
        assert busy.returncode == 1 and "is running on" in busy.stderr and "cancel it" in busy.stderr, busy.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        storage.release.set()
        time.sleep(float(FAST["INPAINT_ADVISOR_WORKER_STALL_AFTER"]) + 1)  # its heartbeats are stale now
        assert _job(db, queued.job_id).status == "doing"  # nothing has touched it yet
        second = _worker(world)  # the restart: it prunes the dead worker's row as it starts
        _wait(lambda: _job(db, queued.job_id).status == "succeeded", 120, "the dead worker's job")
    finally:
        storage.release.set()
        said = _stop(first, *([second] if second else []))
    with reg.engine.connect() as conn:
        assert not conn.exec_driver_sql("SELECT 1 FROM procrastinate_workers WHERE id = %s", (dead,)).all()  # pruned
    assert f"job {queued.job_id} queued again: its worker" in said[1], said[1]
    assert f"job {queued.job_id} done in" in said[1]
    assert [p.name.split("-inpainting.v")[0] for p in world["out"].iterdir() if p.name[0] != "."] == \
        ["teamModel700001"]  # fmt: skip


def test_the_periodic_crawl_is_deferred_once_per_tick_across_two_workers(team_world):
    env = {**team_world["env"], "INPAINT_ADVISOR_CRAWL_CRON": "* * * * * */2"}  # every 2 s (a test's period)
    workers = [_worker(team_world, "--crawl-every", "1h", env=env) for _ in range(2)]
    try:
        crawls = _wait(lambda: (c := [j for j in team.jobs(db=team_world["db"]) if j.task == "crawl"]) and
                       len({j.args["timestamp"] for j in c}) >= 3 and c, 90, "three crawl ticks")  # fmt: skip
    finally:
        said = _stop(*workers)
    ticks = [j.args["timestamp"] for j in crawls]
    assert len(ticks) == len(set(ticks))  # one job per tick, not one per worker
    assert re.search(r"job \d+ crawl done in \d+\.\d s: civitai \w+", "".join(said)), said


@pytest.mark.team(n=int(os.environ.get("INPAINT_ADVISOR_LOAD_BUILDS", "24")))
def test_four_workers_one_killed_9_mid_build_lose_nothing(team_world):
    """The load and fault test: every job ends done, each output registered once and correct, nothing under a
    final name incomplete; the killed worker's job is picked up again after the heartbeat timeout."""
    world, n = team_world, team_world["n"]
    storage = world["storage"]
    victim_version = _version(world, "civitai:700001")
    held = storage.blobs[victim_version]
    held.hold_after = len(held.data) // 2  # one build stops mid-download: its worker is the one killed
    _enqueue(world)
    start = time.monotonic()
    workers = [_worker(world) for _ in range(4)]
    try:
        assert storage.holding.wait(120), "no build reached the held download"
        held_job = _wait(lambda: next((j for j in _build_jobs(world["db"]) if j.status == "doing"
                                       and j.args["asked"] == "civitai:700001"), None), 30, "the held job")
        pid = int(held_job.worker.rsplit(":", 1)[1])
        victim = next(w for w in workers if w.pid == pid)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait(10)
        storage.release.set()
        workers[workers.index(victim)] = _worker(world)  # restarted
        _wait(lambda: _job(world["db"], held_job.id).status == "succeeded", 120, "the killed worker's job")
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
    reg = registry.open(world["db"])
    with reg.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT path, sha256 FROM artifact WHERE kind = 'built'").all()
    assert len(rows) == n and len({r[0] for r in rows}) == n  # each output registered exactly once
    recorded = dict(rows)
    by_hand = world["tmp"] / "by-hand.safetensors"  # the killed worker's build, against the merge done here
    merge(world["a"], world["tmp"] / "made" / "b0.safetensors", world["c"], by_hand)
    x, y = load_file(next(world["out"].glob("teamModel700001-inpainting.v*.safetensors"))), load_file(by_hand)
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)  # a worker merges A, B and C too
    for p in outs:  # complete and what the registry says
        assert hashlib.sha256(p.read_bytes()).hexdigest().upper() == recorded[str(p.resolve())].upper()
        with safe_open(str(p), "pt") as f:
            assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").shape[1] == 9


def test_build_missing_enqueue_queues_the_most_used_models_without_a_release(team_world):
    done = run_cli("build", "--missing", "--limit", "2", "--enqueue", "--json", env=team_world["env"])
    queued = json.loads(done.stdout)["queued"]
    assert done.returncode == 0 and len(queued) == 2 and all(q["job_id"] for q in queued)
    assert {q["query"] for q in queued} <= set(team_world["queries"])
    assert sorted(j.args["asked"] for j in _build_jobs(team_world["db"])) == sorted(q["query"] for q in queued)
    human = run_cli("build", "--missing", "--limit", "2", "--enqueue", env=team_world["env"]).stdout
    assert human.count("already queued (job ") == 2  # the same builds: the same jobs


@pytest.mark.team(n=1)
def test_a_queued_get_is_run_by_a_worker_into_the_ui_folder_and_queued_once(team_world):
    db = team_world["db"]
    root = team_world["tmp"] / "shared" / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    first = team.enqueue_get("civitai:700001", root=root, db=db)
    again = team.enqueue_get("Team Model 700001", root=root, db=db)  # the same model, named otherwise
    assert again.already and again.job_id == first.job_id
    with pytest.raises(team.NotQueued) as refused:
        team.enqueue_get("civitai:700001", root=team_world["tmp"], db=db)
    assert refused.value.code == "no-ui"
    worker = _worker(team_world)
    try:
        _wait(lambda: _job(db, first.job_id).status == "succeeded", 120, "the get job to succeed")
    finally:
        said = _stop(worker)[0]
    placed = root / "models" / "checkpoints" / A_FILE  # SD 1.5's official inpainting model: the first answer
    assert placed.read_bytes() == team_world["a"].read_bytes()
    assert f"job {first.job_id} get start: civitai:700001" in said
    assert re.search(rf"job {first.job_id} get done in \d+\.\d s: .*{A_FILE}", said), said
