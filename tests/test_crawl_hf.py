"""The Hugging Face crawl against a real HTTP server on 127.0.0.1 that behaves like the Hub."""

import json
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import text

from advisor.advice import shell_text
from advisor.advice.lookup import NotFound, lookup
from crawler import civitai, hf, registry
from crawler.http import RetriesExhausted, RetryPolicy
from tests.civitai_fake import FakeCivitai, synthetic_item
from tests.conftest import ROOT, cli_env, option, registry_text, run_cli
from tests.hf_fake import SD15, ExactFile, FakeHub, Fault, fixture_hub

FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)
OFFICIAL_SD1 = "stable-diffusion-v1-5/stable-diffusion-inpainting"


@pytest.fixture
def hub_url(serve):
    return serve


@pytest.fixture
def reg(registry_db):
    return registry.open(registry_db)


def rows(reg, sql: str, **params) -> list[tuple]:
    with reg.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params).all()]


def one(reg, sql: str, **params):
    found = rows(reg, sql, **params)
    return found[0] if found else None


def dump(reg) -> dict:
    return {t: sorted(rows(reg, f"SELECT * FROM {t}"), key=repr)
            for t in ("model", "version", "file", "inpaintlink", "samefile")}  # fmt: skip


def crawl(reg, url, **kw):
    return hf.crawl(reg, endpoint=url, policy=kw.pop("policy", FAST), sleep=kw.pop("sleep", lambda s: None), **kw)


def test_full_crawl_records_lineage_family_and_proven_inpainting(reg, hub_url):
    fake = FakeHub(fixture_hub(), page_limit=2)
    summary = crawl(reg, hub_url(fake))
    assert summary.status == "ok" and summary.errors == 0
    models = {r[0]: r[1:] for r in rows(reg, "SELECT id, family, base_model, is_inpainting, has_inpainting, mode "
                                                "FROM model WHERE source = 'hf'")}  # fmt: skip
    # each crawled repo exactly once (it is listed by several queries); the LoRA skipped
    assert set(models) == {"hf:dreamer/dreamvision", "hf:dreamer/dreamvision-inpainting", "hf:misc/not-really-inpaint",
                           "hf:xlfan/xl-merge", "hf:xlfan/no-card", "hf:painter/realmix", "hf:fan/dreamvision-remix",
                           "hf:loner/plain-inpaint", "hf:vault/gated-xl"}  # fmt: skip
    assert summary.skipped >= 1
    # base_model as a string, as a list, and from tags only (no cardData)
    assert models["hf:dreamer/dreamvision"][:2] == ("sd1", SD15)
    assert models["hf:xlfan/xl-merge"][:2] == ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")
    assert models["hf:xlfan/no-card"][:2] == ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")
    assert one(reg, "SELECT base_model_type FROM version WHERE model_id = 'hf:xlfan/xl-merge'") == ("merge",)
    # a fine-tune of a fine-tune: lineage through the registry
    assert models["hf:fan/dreamvision-remix"][:2] == ("sd1", "dreamer/dreamvision")
    # proof from unet/config.json in_channels
    assert models["hf:dreamer/dreamvision-inpainting"][2] == 1
    evidence = one(
        reg, "SELECT inpaint_evidence FROM version WHERE id = 'hf:dreamer/dreamvision-inpainting@diffusers'"
    )
    assert "unet/config.json in_channels 9" in evidence[0]
    # an inpaint-pipeline tag on a 4-channel UNet is only a hint
    assert models["hf:misc/not-really-inpaint"][2:4] == (0, 0)
    assert (
        "hint only"
        in one(reg, "SELECT inpaint_evidence FROM version WHERE model_id='hf:misc/not-really-inpaint'")[0]
    )
    # proof from safetensors header shapes (range reads), no model_index.json, no lineage
    assert models["hf:loner/plain-inpaint"][:4] == ("sdxl", None, 1, 1)
    realmix = dict(rows(reg, "SELECT name, is_inpainting FROM version WHERE model_id = 'hf:painter/realmix'"))
    assert realmix == {"realmix_v2": 0, "realmix_v2-inpainting": 1}
    assert one(reg, "SELECT parent_version_id, kind FROM inpaintlink WHERE parent_model_id = 'hf:painter/realmix'") \
        == ("hf:painter/realmix@realmix_v2.safetensors", "same-model")  # fmt: skip
    # sibling repo by the same author
    sibling = one(reg, "SELECT inpaint_model_id, kind FROM inpaintlink WHERE parent_model_id = :m",
                  m="hf:dreamer/dreamvision")  # fmt: skip
    assert sibling == ("hf:dreamer/dreamvision-inpainting", "sibling-model")
    # gated: recorded with what the listing says, not fatal
    assert models["hf:vault/gated-xl"][0] == "sdxl" and models["hf:vault/gated-xl"][4] == "Gated"
    # sizes and lfs sha256 from blobs=true
    f = one(reg, "SELECT size_kb, sha256 FROM file WHERE id = 'hf:painter/realmix/realmix_v2.safetensors'")
    assert f[0] == 2 * 2**20 and len(f[1]) == 64 and f[1] == f[1].upper()
    # the listing asked for lineage per base and relation, with expand fields, and followed absolute Link URLs
    listings = [r for r in fake.requests if r.startswith("/api/models?")]
    assert any("filter=base_model%3Afinetune%3Astable-diffusion-v1-5%2Fstable-diffusion-v1-5" in r for r in listings)
    assert all("expand=cardData" in r and "expand=siblings" in r for r in listings)
    assert any("cursor=" in r for r in listings)


def test_second_crawl_changes_nothing_and_reads_no_files(reg, hub_url):
    fake = FakeHub(fixture_hub(), page_limit=3)
    url = hub_url(fake)
    crawl(reg, url)
    before = dump(reg)
    fake.requests.clear()
    again = crawl(reg, url, check_officials=False)
    assert again.inspected == 0 and again.written == 0
    assert all(r.startswith("/api/models?") for r in fake.requests)  # listings only: no config, header, info
    assert dump(reg) == before


def test_incremental_reads_only_changed_repos_and_stops_early(reg, hub_url):
    repos = fixture_hub()
    fake = FakeHub(repos, page_limit=2)
    url = hub_url(fake)
    crawl(reg, url)
    changed = next(r for r in repos if r.id == "xlfan/no-card")
    changed.touch("2099-01-01T00:00:00.000Z")
    changed.files["unet/config.json"].content = json.dumps({"in_channels": 9, "cross_attention_dim": 2048}).encode()
    fake.requests.clear()
    summary = crawl(reg, url, mode="incremental", check_officials=False)
    assert summary.inspected == 1
    assert one(reg, "SELECT is_inpainting FROM model WHERE id = 'hf:xlfan/no-card'") == (1,)
    # newest-first listings stop at the first repo older than the last crawl: no walk through every page
    assert not any("cursor=" in r for r in fake.requests)


def test_rate_limits_and_faults_are_retried_honouring_the_reset(reg, hub_url):
    fake = FakeHub(fixture_hub(), faults=[
        Fault(429, ratelimit_reset=7),  # the very first listing page
        Fault(503, path_prefix="/api/models/"),  # model_info through huggingface_hub
        Fault(200, html=True),  # an HTML page instead of JSON
        Fault(500, path_prefix="/dreamer/"),  # the resolve endpoint (unet/config.json)
    ])  # fmt: skip
    slept: list[float] = []
    summary = crawl(reg, hub_url(fake), sleep=slept.append)
    assert summary.status == "ok" and summary.retries == 4
    assert 7.0 in slept  # the RateLimit reset, not a guess
    assert not fake.faults
    assert one(reg, "SELECT is_inpainting FROM model WHERE id = 'hf:dreamer/dreamvision-inpainting'") == (1,)


def test_retries_run_out_with_a_clear_error_then_resume(reg, hub_url):
    fake = FakeHub(fixture_hub(), page_limit=2)
    url = hub_url(fake)
    first = crawl(reg, url, max_pages=5, check_officials=False)
    assert first.status == "stopped"
    assert first.note == "stopped after 5 pages as asked (--max-pages); run again to go on"
    assert one(reg, "SELECT status, last_error, cursor IS NOT NULL FROM crawlrun") == ("stopped", None, 1)
    fake.faults = [Fault(429, ratelimit_reset=1) for _ in range(4)]
    with pytest.raises(RetriesExhausted, match="gave up on .* after 4 attempts: HTTP 429"):
        crawl(reg, url)
    assert one(reg, "SELECT status, cursor IS NOT NULL FROM crawlrun ORDER BY id DESC LIMIT 1") == ("failed", 1)
    done = crawl(reg, url)
    assert done.resumed and done.status == "ok"
    assert one(reg, "SELECT count(*) FROM model WHERE source = 'hf'") == (9,)


def test_kill_mid_crawl_then_resume_stores_every_repo_once(registry_db, hub_url):
    fake = FakeHub(fixture_hub(), page_limit=1, hold_list_page=12)
    url = hub_url(fake)
    env = cli_env(INPAINT_ADVISOR_DB=registry_db)
    cmd = [sys.executable, "-m", "advisor", "crawl", "hf", "--hf-endpoint", url, "--no-officials", "--json"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert fake.holding.wait(timeout=60), "the crawler never reached the held page"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        fake.release.set()
    reg = registry.open(registry_db)
    committed = one(reg, "SELECT pages, status FROM crawlrun")
    assert committed == (12, "running")  # the held page was never committed
    result = run_cli("crawl", "hf", "--hf-endpoint", url, "--no-officials", "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resumed"] is True and summary["status"] == "ok"
    ids = [r[0] for r in rows(reg, "SELECT id FROM model WHERE source = 'hf'")]
    assert len(ids) == len(set(ids)) == 9


def test_officials_dead_mirror_moves_the_recommendation(reg, registry_db, hub_url):
    repos = [r for r in fixture_hub() if r.id != OFFICIAL_SD1]  # the usual SD 1.5 inpainting mirror is gone
    changed = next(r for r in repos if r.id == "stabilityai/stable-diffusion-xl-base-1.0")
    changed.files["sd_xl_base_1.0.safetensors"] = ExactFile(123, "0" * 64)  # replaced by something else
    crawl(reg, hub_url(FakeHub(repos)))
    status = {(o.family, o.role, o.repo): o for o in reg.status().officials}
    assert not status[("sd1", "inpaint", OFFICIAL_SD1)].alive
    assert "401" in status[("sd1", "inpaint", OFFICIAL_SD1)].detail
    assert status[("sd1", "inpaint", "sd-legacy/stable-diffusion-inpainting")].matches
    sdxl = status[("sdxl", "base", "stabilityai/stable-diffusion-xl-base-1.0")]
    assert sdxl.alive and not sdxl.matches and "sha256" in sdxl.detail and "size 123" in sdxl.detail
    answer = lookup("xlfan/no-card", db=registry_db, offline=True)
    assert any(r.kind == "official" for r in answer.alternatives)
    answer = lookup("fan/dreamvision-remix", db=registry_db, offline=True)
    official = next(r for r in [answer.recommendation, *answer.alternatives] if r.kind == "official")
    assert official.target.repo == "sd-legacy/stable-diffusion-inpainting"
    assert any(OFFICIAL_SD1 in w and "gone" in w for w in answer.warnings)
    # B of the build is the repo's diffusers folder, which merge reads as is
    build = next(r for r in [answer.recommendation, *answer.alternatives] if r.kind == "build")
    assert option(build.command, "--model") == "dreamvision-remix/"
    assert option(build.command, "--out") == "dreamvision-remix-inpainting.safetensors"
    fetch_b = next(d for d in build.downloads if d.label == "download B")
    assert shell_text(fetch_b) == "hf download --local-dir dreamvision-remix -- fan/dreamvision-remix"


def test_same_sha256_on_civitai_and_hf_links_the_two(reg, registry_db, hub_url, serve):
    repos = fixture_hub()
    realmix = next(r for r in repos if r.id == "painter/realmix")
    sha = realmix.files["realmix_v2.safetensors"].sha256.upper()
    item = synthetic_item(5150, __import__("random").Random(1), __import__("datetime").datetime(2024, 1, 1))
    item["modelVersions"][0]["files"][0]["hashes"]["SHA256"] = sha
    newest = item["modelVersions"][0]["id"]
    civitai.crawl(reg, base_url=serve(FakeCivitai([item])), policy=FAST)
    summary = crawl(reg, hub_url(FakeHub(repos)), check_officials=False)
    assert summary.same_files == 1
    assert one(reg, "SELECT model_a, model_b, version_b FROM samefile") == (
        "civitai:5150",
        "hf:painter/realmix",
        "hf:painter/realmix@realmix_v2.safetensors",
    )
    answer = lookup("civitai:5150", db=registry_db, offline=True)
    assert any("hf model realmix" in n for n in answer.notes)
    assert answer.match.version_id == f"civitai:v{newest}"


def test_a_repo_fetched_by_lookup_is_linked_to_its_civitai_twin(reg, registry_db, hub_url, serve, monkeypatch):
    repos = fixture_hub()
    sha = next(r for r in repos if r.id == "painter/realmix").files["realmix_v2.safetensors"].sha256.upper()
    item = synthetic_item(5151, __import__("random").Random(2), __import__("datetime").datetime(2024, 1, 1))
    item["modelVersions"][0]["files"][0]["hashes"]["SHA256"] = sha
    civitai.crawl(reg, base_url=serve(FakeCivitai([item])), policy=FAST)
    monkeypatch.setenv("HF_ENDPOINT", hub_url(FakeHub(repos)))
    answer = lookup("painter/realmix", db=registry_db)
    assert any("civitai model" in n and "civitai:5151" in n for n in answer.notes)
    assert one(reg, "SELECT model_a, model_b FROM samefile") == ("civitai:5151", "hf:painter/realmix")


def test_token_is_sent_never_stored_or_printed(registry_db, hub_url):
    fake = FakeHub(fixture_hub())
    url = hub_url(fake)
    secret = "hf_SECRETtoken123456789"
    result = run_cli("crawl", "hf", "--hf-endpoint", url, env=cli_env(INPAINT_ADVISOR_DB=registry_db, HF_TOKEN=secret))
    assert result.returncode == 0, result.stderr
    assert fake.auth_headers and set(fake.auth_headers) == {f"Bearer {secret}"}
    assert secret not in result.stdout + result.stderr
    assert secret not in registry_text(registry_db)
    # with the token, the gated repo's files are readable
    reg = registry.open(registry_db)
    assert one(reg, "SELECT mode FROM model WHERE id = 'hf:vault/gated-xl'") == (None,)


def test_lookup_fetches_an_unknown_repo_live_and_says_so_offline(registry_db, hub_url, monkeypatch):
    fake = FakeHub(fixture_hub())
    monkeypatch.setenv("HF_ENDPOINT", hub_url(fake))
    registry.open(registry_db)
    with pytest.raises(NotFound) as offline:  # a precise reference to nothing: one rule, an error
        lookup("painter/realmix", db=registry_db, offline=True)
    assert offline.value.code == "not-found" and str(offline.value).startswith("painter/realmix is not in the registry")
    assert "offline: the Hugging Face Hub was not asked" in str(offline.value) and "is empty" in str(offline.value)
    answer = lookup("https://huggingface.co/painter/realmix", db=registry_db)
    assert answer.match.name == "painter/realmix" and answer.match.family == "sd1"
    assert answer.recommendation.kind == "own-release"
    assert answer.recommendation.target.file == "realmix_v2-inpainting.safetensors"
    with pytest.raises(NotFound) as gone:
        lookup("nobody/deleted-repo", db=registry_db)
    assert gone.value.code == "not-found" and "not on the Hugging Face Hub" in str(gone.value)


def test_cli_crawl_hf_json_and_status_show_officials(registry_db, hub_url):
    url = hub_url(FakeHub([r for r in fixture_hub() if r.id != OFFICIAL_SD1]))
    env = cli_env(INPAINT_ADVISOR_DB=registry_db)
    result = run_cli("crawl", "hf", "--hf-endpoint", url, "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "ok" and summary["new_inpainting"] == 3
    assert OFFICIAL_SD1 in summary["officials_dead"]
    status = run_cli("status", env=env)
    assert "Official checkpoints" in status.stdout and "gone" in status.stdout
    as_json = json.loads(run_cli("status", "--json", env=env).stdout)
    dead = [o for o in as_json["officials"] if not o["alive"]]
    assert {o["repo"] for o in dead} >= {OFFICIAL_SD1, "runwayml/stable-diffusion-inpainting"}
    assert as_json["per_source"]["hf"] == 9


def test_unknown_repo_endpoint_is_a_clear_error(registry_db):
    env = cli_env(INPAINT_ADVISOR_DB=registry_db)
    result = run_cli("crawl", "hf", "--hf-endpoint", "http://127.0.0.1:9", "--retries", "2", "--backoff", "0",
                     env=env)  # fmt: skip
    assert result.returncode == 1
    assert "gave up" in result.stderr and "run the same command again to resume" in result.stderr


def test_a_cursor_from_another_query_list_restarts_the_listings(reg, hub_url):
    fake = FakeHub(fixture_hub(), page_limit=2)
    url = hub_url(fake)
    assert crawl(reg, url, max_pages=3, check_officials=False).status == "stopped"
    stale = json.dumps({"query": 2, "next": "/api/models?stale=1", "label": "a listing data/ no longer has"})
    with reg.engine.begin() as conn:
        conn.execute(text("UPDATE crawlrun SET cursor = :c"), {"c": stale})
    fake.requests.clear()
    done = crawl(reg, url, check_officials=False)
    assert done.resumed and done.status == "ok"
    assert not any("stale=1" in r for r in fake.requests)
    assert one(reg, "SELECT count(*) FROM model WHERE source = 'hf'") == (9,)


def test_every_error_is_named_in_the_summary_the_run_record_and_status(registry_db, hub_url):
    """Requests that fail without stopping the crawl (a config read answered 400, an official mirror the Hub
    would not describe) are each kept with their URL and reason: in the table (a few, then how many more),
    in the run record, and in `status` and `status --json` (the last run of each source)."""
    broken = ["dreamer/dreamvision", "dreamer/dreamvision-inpainting", "misc/not-really-inpaint", "xlfan/xl-merge",
              "xlfan/no-card"]  # fmt: skip
    faults = [Fault(400, path_prefix=f"/{repo}/resolve/") for repo in broken]
    fake = FakeHub(fixture_hub(), faults=faults + [Fault(400, path_prefix=f"/api/models/{OFFICIAL_SD1}")])
    env = cli_env(INPAINT_ADVISOR_DB=registry_db, COLUMNS="200")
    result = run_cli("crawl", "hf", "--hf-endpoint", hub_url(fake), "--retries", "2", "--backoff", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert not fake.faults  # every fault was met
    lines = result.stdout.splitlines()
    assert any(line.split() == ["errors", "6"] for line in lines)
    shown = [i for i, line in enumerate(lines) if line.strip().startswith("hf: HTTP 400")]  # each with its URL
    assert len(shown) == 3 and all("/resolve/" in lines[i + 1] or "/api/models/" in lines[i + 1] for i in shown)
    assert "and 3 more (--json lists the first 50)" in result.stdout

    reg = registry.open(registry_db)
    errors, stored = one(reg, "SELECT errors, first_errors FROM crawlrun")
    notes = json.loads(stored)
    assert errors == 6 and len(notes) == 6 and {n["source"] for n in notes} == {"hf"}
    assert sorted(n["url"].split("/resolve/")[0].split("/", 3)[-1] for n in notes if "/resolve/" in n["url"]) \
        == sorted(broken)  # fmt: skip
    assert any(n["url"].endswith(f"/api/models/{OFFICIAL_SD1}") and "previous check stays" in n["reason"]
               for n in notes)  # fmt: skip
    assert all(n["reason"].startswith("HTTP 400") for n in notes)

    status = json.loads(run_cli("status", "--json", env=env).stdout)
    last = {r["source"]: r for r in status["last_runs"]}
    assert last["hf"]["errors"] == 6 and last["hf"]["first_errors"] == notes
    human = run_cli("status", env=env).stdout
    assert "errors of the last hf crawl" in human and "and 3 more" in human
    assert sum(line.strip().startswith("hf: HTTP 400") for line in human.splitlines()) == 3


def test_a_repo_huggingface_hub_cannot_read_is_that_repos_error_and_the_crawl_goes_on(reg, hub_url):
    """An id huggingface_hub refuses or a date it cannot parse is one error of its repo, named with it; a file name
    that is not text is a file not read. The crawl ends ok with every other repo stored, and so does the next."""
    from tests.hf_fake import FakeFile, FakeRepo, lineage_tags

    def single_file(repo: str, when: str, name: str = "model.safetensors") -> FakeRepo:
        return FakeRepo(repo, last_modified=when, tags=lineage_tags(SD15, library=None),
                        files={name: FakeFile(b"x" * 64, size=2 << 30)})  # fmt: skip

    bad = [single_file("odd:author/name", "2025-07-01T00:00:00.000Z"),
           single_file("when/never", "2025-13-45T99:99:99Z"),
           single_file("names/not-text", "2025-07-02T00:00:00.000Z", "a\ud800b.safetensors")]  # fmt: skip
    fake = FakeHub(fixture_hub() + bad)
    summary = crawl(reg, hub_url(fake), check_officials=False)
    assert summary.status == "ok"
    reasons = {note.url: note.reason for note in summary.first_errors}
    for repo in ("odd:author/name", "when/never"):
        assert any(url.endswith(f"/api/models/{repo}") for url in reasons), (repo, reasons)
    assert all("huggingface_hub cannot read" in r for r in reasons.values()) and summary.errors == 2
    stored = {row[0].removeprefix("hf:") for row in rows(reg, "SELECT id FROM model WHERE source = 'hf'")}
    assert {"dreamer/dreamvision", "painter/realmix", "xlfan/xl-merge", "names/not-text"} <= stored
    assert crawl(reg, hub_url(fake), check_officials=False).status == "ok"
