"""The Civitai crawl against a real HTTP server on 127.0.0.1 serving schema-faithful fixtures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from crawler import civitai, registry
from crawler.http import ApiError, JsonClient, RetriesExhausted, RetryPolicy
from crawler.registry import runs
from crawler.registry.schema import CrawlLock
from tests.civitai_fake import FakeCivitai, Fault, load_fixture, synthetic_catalogue, synthetic_item
from tests.conftest import ROOT, cli_env, registry_text, run_cli

FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)


def dump(reg) -> dict:
    """Every content table, sorted, for before/after comparisons."""
    with reg.engine.connect() as conn:
        return {
            t: sorted(map(tuple, conn.execute(text(f"SELECT * FROM {t}")).all()), key=repr)
            for t in ("model", "version", "file", "inpaintlink")
        }


def one(reg, sql: str, **params):
    with reg.engine.connect() as conn:
        return conn.execute(text(sql), params).first()


@pytest.fixture
def reg(registry_db):
    return registry.open(registry_db)


def test_fixture_crawl_stores_every_checkpoint_once_with_versions_and_files(reg, serve):
    fake = FakeCivitai(load_fixture())
    summary = civitai.crawl(reg, base_url=serve(fake), policy=FAST)
    checkpoints = [i for i in load_fixture() if i["type"] == "Checkpoint"]
    assert summary.status == "ok"
    assert one(reg, "SELECT count(*) FROM model")[0] == len(checkpoints) == summary.models
    assert one(reg, "SELECT count(*) FROM version")[0] == sum(len(i["modelVersions"]) for i in checkpoints)
    # nsfw=true was sent: NSFW models are not silently dropped
    assert one(reg, "SELECT nsfw FROM model WHERE id='civitai:43331'")[0] == 1
    listings = [r for r in fake.requests if r["path"] == "/api/v1/models"]
    assert listings and all(r["query"]["nsfw"] == ["true"] and r["query"]["types"] == ["Checkpoint"]
                            for r in listings)  # fmt: skip
    assert all(r["query"]["sort"] == ["Oldest"] for r in listings)
    # each model's download count, for `build --missing`
    item = next(i for i in checkpoints if (i.get("stats") or {}).get("downloadCount"))
    stored = one(reg, "SELECT downloads FROM model WHERE id = :id", id=f"civitai:{item['id']}")[0]
    assert stored == item["stats"]["downloadCount"] > 0


def test_shape_drift_is_accepted(reg, serve):
    civitai.crawl(reg, base_url=serve(FakeCivitai(load_fixture())), policy=FAST)
    # no creator, no baseModelType, no hashes, no primary, publishedAt without Z
    aniverse = one(reg, "SELECT creator, family FROM model WHERE id='civitai:107842'")
    assert aniverse == (None, "sd1")
    version = one(reg, "SELECT base_model_type, published_at FROM version WHERE id='civitai:v115741'")
    assert version[0] is None and str(version[1]).startswith("2023-07-10 12:30:00")
    f = one(reg, "SELECT sha256, autov2, \"primary\" FROM file WHERE id='civitai:f120000'")
    assert f == (None, None, 0)
    # with and without "Z" parse to the same UTC instant
    z = one(reg, "SELECT published_at FROM version WHERE id='civitai:v176425'")[0]
    no_z = one(reg, "SELECT published_at FROM version WHERE id='civitai:v221343'")[0]
    assert str(z).startswith("2023-09-03 13:22:20") and str(no_z).startswith("2023-11-10 01:02:03")
    # lower-case hash keys and values are normalised; unknown enums are stored as written
    hf = one(reg, "SELECT sha256, type, format FROM file WHERE id='civitai:f900201'")
    assert hf == ("ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCD", "Archive", "GGUF2")
    assert one(reg, "SELECT count(*) FROM version WHERE model_id='civitai:900002'")[0] == 0


def test_unknown_base_models_are_stored_as_is_and_listed(reg, serve):
    summary = civitai.crawl(reg, base_url=serve(FakeCivitai(load_fixture())), policy=FAST)
    assert summary.unknown_base_models == {"Hyper Future 9000"}
    assert one(reg, "SELECT base_model, family FROM version WHERE id='civitai:v900101'") == (
        "Hyper Future 9000",
        None,
    )
    assert reg.status().unknown_base_models == [("Hyper Future 9000", 1)]


def test_inpainting_releases_are_detected_and_linked(reg, serve):
    summary = civitai.crawl(reg, base_url=serve(FakeCivitai(load_fixture())), policy=FAST)
    inpaint = {r[0] for r in reg.engine.connect().execute(text("SELECT id FROM version WHERE is_inpainting"))}
    assert inpaint == {
        "civitai:v221343",  # "v7-inpainting" typed Standard
        "civitai:v300001",  # "v1.2.1-inp" typed Standard
        "civitai:v300000",  # "V6.0 B1 inpainting (VAE)" typed Standard
        "civitai:v131004",  # baseModelType Inpainting
        "civitai:v201700",  # a separate "epiCPhotoGasm InPainting" model
        "civitai:v15011",  # "CyberRealistic Inpainting Collection"
    }
    assert summary.new_inpainting == 6
    assert one(reg, "SELECT is_inpainting FROM version WHERE model_id='civitai:500001'")[0] == 0  # ThinPaintLine
    link = one(
        reg,
        "SELECT parent_model_id, parent_version_id, kind FROM inpaintlink WHERE inpaint_version_id='civitai:v221343'",
    )
    assert link == ("civitai:43331", "civitai:v176425", "same-model")
    sibling = one(
        reg,
        "SELECT parent_model_id, parent_version_id, kind, evidence FROM inpaintlink "
        "WHERE inpaint_version_id='civitai:v201700'",
    )
    assert sibling[:3] == ("civitai:132632", "civitai:v201259", "sibling-model")
    assert "same creator" in json.loads(sibling[3])[0]
    assert one(reg, "SELECT has_inpainting FROM model WHERE id='civitai:132632'")[0] == 1
    evidence = json.loads(one(reg, "SELECT inpaint_evidence FROM version WHERE id='civitai:v221343'")[0])
    assert any("v7-inpainting" in e for e in evidence)


def test_crawling_the_same_data_twice_changes_nothing(reg, serve):
    url = serve(FakeCivitai(load_fixture()))
    civitai.crawl(reg, base_url=url, policy=FAST)
    before = dump(reg)
    again = civitai.crawl(reg, base_url=url, policy=FAST)
    assert dump(reg) == before
    assert again.written == 0 and again.new_inpainting == 0


def test_page_boundary_duplicates_of_the_oldest_sort_are_deduplicated(reg, serve):
    fake = FakeCivitai(synthetic_catalogue(250), duplicate_at_boundary=True)
    summary = civitai.crawl(reg, base_url=serve(fake), policy=FAST)
    assert summary.pages == 3
    assert summary.models == 252  # two repeats served...
    assert one(reg, "SELECT count(*) FROM model")[0] == 250  # ...stored once
    assert one(reg, "SELECT count(*) FROM file")[0] == 250 * 2 * 3


def test_429_500_html_and_retry_after_are_retried(reg, serve):
    faults = [Fault(429), Fault(500), Fault(200, html=True), Fault(502, html=True), Fault(503, retry_after="0")]
    fake = FakeCivitai(synthetic_catalogue(150), faults=faults)
    summary = civitai.crawl(reg, base_url=serve(fake), policy=RetryPolicy(attempts=6, base_delay=0.001))
    assert summary.status == "ok" and summary.retries == 5
    assert one(reg, "SELECT count(*) FROM model")[0] == 150


def test_retry_after_and_ratelimit_headers_set_the_wait(serve):
    fake = FakeCivitai(load_fixture(), faults=[Fault(503, retry_after="7"), Fault(429)])
    waits: list[float] = []
    with JsonClient(serve(fake), policy=RetryPolicy(attempts=3, base_delay=2.0), sleep=waits.append) as client:
        client.get("/api/v1/models", params={"limit": "1"})
    assert waits[0] == 7.0  # honoured Retry-After
    assert 1.0 <= waits[1] <= 4.0  # exponential backoff with jitter: attempt 1 waits within [2, 4] / 2 .. 4


def test_other_4xx_is_not_retried(serve):
    fake = FakeCivitai(load_fixture())
    with (
        JsonClient(serve(fake), policy=RetryPolicy(attempts=5, base_delay=0.001)) as client,
        pytest.raises(ApiError) as exc,
    ):
        client.get("/api/v1/models", params={"cursor": "%%%not-a-cursor"})
    assert exc.value.status == 400 and "Invalid cursor" in str(exc.value)
    assert len(fake.requests) == 1


def test_exhausted_retries_fail_clearly_and_the_next_crawl_resumes(reg, serve):
    fake = FakeCivitai(synthetic_catalogue(400))
    url = serve(fake)
    civitai.crawl(reg, base_url=url, policy=FAST, max_pages=2)  # stops resumably after 2 pages
    fake.faults = [Fault(500)] * FAST.attempts
    with pytest.raises(RetriesExhausted, match="gave up on .* after 4 attempts: HTTP 500"):
        civitai.crawl(reg, base_url=url, policy=FAST)
    run = one(reg, "SELECT status, cursor, pages, errors, first_errors FROM crawlrun ORDER BY id DESC")
    assert run[0] == "failed" and run[1] and run[2] == 2 and run[3] == 1
    [note] = json.loads(run[4])  # the error, named in the run record
    assert note["source"] == "civitai" and note["url"] == "/api/v1/models" and "after 4 attempts" in note["reason"]
    summary = civitai.crawl(reg, base_url=url, policy=FAST)
    assert summary.resumed and summary.status == "ok"
    assert one(reg, "SELECT count(*) FROM model")[0] == 400
    assert one(reg, "SELECT count(*) FROM crawlrun")[0] == 1  # the same run, continued
    # ...which keeps the errors of its earlier start, then this one's (the fake serves no file: each ambiguous
    # version's download is gone)
    errors, stored = one(reg, "SELECT errors, first_errors FROM crawlrun")
    assert summary.errors > 0 and errors == 1 + summary.errors
    assert json.loads(stored)[0] == note and len(json.loads(stored)) == min(runs.MAX_ERRORS, errors)
    assert all("HTTP 404: the download is gone" in n["reason"] for n in json.loads(stored)[1:])


def test_max_pages_stops_as_asked_not_interrupted_and_the_next_crawl_goes_on(registry_db, serve):
    url = serve(FakeCivitai(synthetic_catalogue(250)))
    env = cli_env(INPAINT_ADVISOR_DB=registry_db)
    result = run_cli("crawl", "civitai", "--url", url, "--max-pages", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("crawl stopped (run 1, full)") and "interrupted" not in result.stdout
    assert "stopped after 2 pages as asked (--max-pages); run again to go on" in result.stdout
    reg = registry.open(registry_db)
    assert one(reg, "SELECT status, last_error, cursor IS NOT NULL FROM crawlrun") == ("stopped", None, 1)
    as_json = json.loads(run_cli("status", "--json", env=env).stdout)
    assert as_json["last_runs"][0]["status"] == "stopped" and as_json["last_runs"][0]["errors"] == 0
    done = json.loads(run_cli("crawl", "civitai", "--url", url, "--json", env=env).stdout)
    assert done["resumed"] and done["status"] == "ok" and done["note"] is None and done["pages"] == 1
    assert one(reg, "SELECT count(*) FROM model")[0] == 250


def test_an_error_note_has_no_secret_and_the_list_is_bounded(monkeypatch):
    monkeypatch.setenv("CIVITAI_API_TOKEN", "civitai-s3cret-9f2")
    summary = civitai.CrawlSummary(run_id=1, mode="full", resumed=False)
    for n in range(runs.MAX_ERRORS + 7):
        summary.note_error("civitai", f"https://civitai.red/api/download/models/{n}?token=civitai-s3cret-9f2",
                           f"HTTP 500 echoing civitai-s3cret-9f2\n   {n}")  # fmt: skip
    assert summary.errors == runs.MAX_ERRORS + 7 and len(summary.first_errors) == runs.MAX_ERRORS
    first = summary.first_errors[0]
    assert first.url == "https://civitai.red/api/download/models/0?token=***"
    assert first.reason == "HTTP 500 echoing *** 0"


def test_a_second_crawl_on_the_same_registry_is_refused(registry_db, serve):
    reg = registry.open(registry_db)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with reg.engine.begin() as conn:
            conn.execute(
                CrawlLock.__table__.insert().values(
                    source="civitai",
                    run_id=1,
                    host=runs.socket.gethostname(),
                    pid=holder.pid,
                    heartbeat_at=runs.utcnow(),
                )
            )
        url = serve(FakeCivitai(load_fixture()))
        result = run_cli("crawl", "civitai", "--db", registry_db, "--url", url)
        assert result.returncode == 1
        assert f"another civitai crawl (run 1, pid {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    # once the holder is gone, its lock is stale and the crawl goes ahead
    result = run_cli("crawl", "civitai", "--db", registry_db, "--url", url, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ok"


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _committed_pages(db: str) -> int:
    with registry.open(db).engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(max(pages), 0) FROM crawlrun")).scalar_one()


def test_a_crawl_killed_mid_page_resumes_with_no_loss_and_no_duplicate(registry_db, serve):
    fake = FakeCivitai(synthetic_catalogue(1000), hold_page=5)
    url = serve(fake)
    child = subprocess.Popen(
        [sys.executable, "-m", "advisor", "crawl", "civitai", "--db", registry_db, "--url", url],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        assert fake.holding.wait(60), "crawler never asked for page 5"
        # the writer trails the fetch process by up to three queued pages (more on a slower reg): kill once
        # page 4 is committed, while page 5 is being written or in flight
        deadline = time.monotonic() + 60
        while _committed_pages(registry_db) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        fake.release.set()
        if child.poll() is None:
            child.kill()
    # the orphaned fetch process notices its writer is gone and exits (it once hung flushing its queue)
    deadline = time.monotonic() + 30
    while _processes_mentioning(registry_db) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_mentioning(registry_db), "the fetch process outlived the killed crawl"
    reg = registry.open(registry_db)
    committed = one(reg, "SELECT pages, cursor, status FROM crawlrun")
    stored = one(reg, "SELECT count(*) FROM model")[0]
    assert committed[2] == "running" and committed[1]  # left behind by the killed process
    assert 0 < stored < 1000 and committed[0] in (4, 5)
    fake.hold_page = None
    result = run_cli("crawl", "civitai", "--db", registry_db, "--url", url, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["resumed"] is True and out["status"] == "ok"
    assert one(reg, "SELECT count(*) FROM model")[0] == 1000
    assert one(reg, "SELECT count(*) FROM version")[0] == 2000
    assert one(reg, "SELECT count(DISTINCT id) FROM file")[0] == one(reg, "SELECT count(*) FROM file")[0] == 6000
    assert one(reg, "SELECT pages, status, cursor FROM crawlrun") == (committed[0] + out["pages"], "ok", None)


def test_incremental_crawl_asks_only_for_recent_changes(reg, serve):
    catalogue = synthetic_catalogue(120)
    fake = FakeCivitai(catalogue)
    url = serve(fake)
    civitai.crawl(reg, base_url=url, policy=FAST)
    fresh = synthetic_item(5000, __import__("random").Random(1), runs.utcnow().replace(tzinfo=None))
    fake.items.append(fresh)
    fake.now = runs.utcnow()
    fake._cache.clear()
    fake.requests.clear()
    summary = civitai.crawl(reg, mode="incremental", base_url=url, policy=FAST)
    assert {r["query"].get("period", [None])[0] for r in fake.requests if r["path"] == "/api/v1/models"} == {"Day"}
    assert summary.models == 1 and summary.status == "ok"
    assert one(reg, "SELECT count(*) FROM model")[0] == 121


def test_the_token_is_sent_but_never_printed_or_stored(registry_db, serve):
    secret = "civitai-secret-7f3a9c"
    fake = FakeCivitai(load_fixture(), faults=[Fault(429), Fault(500)] + [Fault(500)] * 3)
    url = serve(fake)
    env = cli_env(CIVITAI_API_TOKEN=secret)
    failed = run_cli(
        "crawl", "civitai", "--db", registry_db, "--url", url, "--retries", "3", "--backoff", "0", env=env
    )
    assert failed.returncode == 1 and "gave up" in failed.stderr
    ok = run_cli("crawl", "civitai", "--db", registry_db, "--url", url, "--backoff", "0", env=env)
    assert ok.returncode == 0, ok.stderr
    assert fake.auth_headers and set(fake.auth_headers) == {f"Bearer {secret}"}
    for output in (failed.stdout, failed.stderr, ok.stdout, ok.stderr):
        assert secret not in output
    assert secret not in registry_text(registry_db)


def test_html_until_retries_run_out_gives_a_clear_error_and_nonzero_exit(registry_db, serve):
    fake = FakeCivitai(load_fixture(), faults=[Fault(200, html=True)] * 3)
    result = run_cli("crawl", "civitai", "--db", registry_db, "--url", serve(fake), "--retries", "3", "--backoff", "0")
    assert result.returncode == 1
    assert "HTML page instead of JSON" in result.stderr and "run the same command again to resume" in result.stderr


def test_status_shows_counts_per_family_and_coverage(registry_db, serve):
    url = serve(FakeCivitai(load_fixture()))
    assert run_cli("crawl", "civitai", "--db", registry_db, "--url", url).returncode == 0
    result = run_cli("status", "--db", registry_db, "--json")
    st = json.loads(result.stdout)
    fams = {f["family"]: f for f in st["families"]}
    # sd1 fine-tunes: majicMIX, epiCPhotoGasm, Aniverse, DreamShaper, RealCartoon3D, CyberRealistic
    assert fams["sd1"]["models"] == 6 and fams["sd1"]["with_inpainting"] == 5
    assert fams["sdxl"]["models"] == 1 and fams["pony"]["models"] == 1
    assert st["unknown_base_models"] == [["Hyper Future 9000", 1]]
    human = run_cli("status", "--db", registry_db)
    assert "sd1" in human.stdout and "83.3%" in human.stdout and "Hyper Future 9000" in human.stdout


def test_crawl_all_names_each_sources_errors():
    from rich.console import Console

    from advisor.cli import render
    from crawler.crawl_all import AllSummary, SourceResult

    s = civitai.CrawlSummary(run_id=1, mode="full", resumed=False, status="ok")
    for n in range(5):
        s.note_error("civitai", f"https://civitai.red/api/download/models/{n}", "HTTP 503; not read")
    console = Console(record=True, width=100)
    render.crawl_all_summary(console, AllSummary("full", [SourceResult("civitai", "ok", 1.0, s)]))
    text = console.export_text()
    assert "civitai: 5 errors" in text and text.count("HTTP 503; not read") == 3 and "and 2 more" in text
    assert "/api/download/models/0" in text and "/api/download/models/3" not in text
