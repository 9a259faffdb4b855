"""`status --check`: exit 0 while the registry is kept fresh, 1 with the reasons when it is not."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from crawler import civitai, health, registry
from crawler.http import RetriesExhausted, RetryPolicy
from crawler.registry.schema import OfficialCheck
from tests.civitai_fake import FakeCivitai, Fault, load_fixture, synthetic_catalogue
from tests.conftest import run_cli

FAST = RetryPolicy(attempts=2, base_delay=0, max_delay=0)


def _check(db, *extra):
    result = run_cli("status", "--check", "--db", db, "--json", *extra)
    return result.returncode, json.loads(result.stdout)


def test_a_freshly_crawled_registry_is_healthy_and_a_stale_one_is_not(registry_db, serve):
    engine = registry.open(registry_db)
    civitai.crawl(engine, base_url=serve(FakeCivitai(load_fixture())), policy=FAST)
    code, report = _check(registry_db)
    assert code == 0 and report["healthy"] and report["reasons"] == []
    crawled = {s["source"]: s for s in report["sources"]}
    assert crawled["civitai"]["models"] > 0 and crawled["civitai"]["age_s"] < 60
    assert crawled["hf"]["reasons"] == ["never crawled here"] and crawled["hf"]["last_status"] is None
    assert "sd1" in report["coverage"]
    later = health.check(engine, timedelta(hours=24), now=datetime.now(UTC) + timedelta(days=2))
    assert not later.healthy and "over the limit of 24.0 h" in later.reasons[0]
    code, report = _check(registry_db, "--max-age", "7d")
    assert code == 0


def test_a_failed_last_crawl_and_a_gone_official_file_are_unhealthy(registry_db, serve):
    engine = registry.open(registry_db)
    fake = FakeCivitai(synthetic_catalogue(300))
    url = serve(fake)
    civitai.crawl(engine, base_url=url, policy=FAST)
    fake.faults = [Fault(500)] * FAST.attempts
    with pytest.raises(RetriesExhausted):
        civitai.crawl(engine, base_url=url, policy=FAST)
    code, report = _check(registry_db)
    assert code == 1 and any("civitai: the last crawl failed" in r for r in report["reasons"])
    engine.save_official_checks([OfficialCheck(id="sd1:inpaint:x/y", family="sd1", role="inpaint", repo="x/y",
                                       file="sd-v1-5-inpainting.ckpt", alive=False, detail="repo deleted",
                                       checked_at=datetime.now(UTC))])  # fmt: skip
    code, report = _check(registry_db)
    assert report["officials_gone"] == ["sd1 inpaint: x/y/sd-v1-5-inpainting.ckpt (repo deleted)"]
    human = run_cli("status", "--check", "--db", registry_db)
    assert human.returncode == 1 and "unhealthy" in human.stdout and "repo deleted" in human.stdout


def test_no_registry_or_one_never_crawled_is_unhealthy(tmp_path, registry_db):
    result = run_cli("status", "--check", "--db", str(tmp_path / "none.db"), "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["error"]["code"] == "no-registry"
    registry.open(registry_db)  # created, never crawled
    code, report = _check(registry_db)
    assert code == 1 and report["reasons"] == ["no source was ever crawled into this registry"]


@pytest.mark.parametrize("value", ["0", "-3h", "6 hours", "h", ""])
def test_a_bad_max_age_is_a_usage_error(tmp_path, value):
    result = run_cli("status", "--check", "--max-age", value, "--db", str(tmp_path / "r.db"), "--json")
    assert result.returncode == 2 and json.loads(result.stdout)["error"]["code"] == "usage"


def test_crawl_all_runs_every_source_and_one_failure_does_not_stop_the_next(registry_db, serve):
    from tests.conftest import cli_env
    from tests.hf_fake import FakeHub, fixture_hub

    civitai_url, hub_url = serve(FakeCivitai(load_fixture())), serve(FakeHub(fixture_hub()))
    env = cli_env(INPAINT_ADVISOR_DB=registry_db, INPAINT_ADVISOR_CIVITAI_URL=civitai_url, HF_ENDPOINT=hub_url)
    result = run_cli("crawl", "all", "--incremental", "--json", "--retries", "2", "--backoff", "0", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["mode"] == "incremental"
    assert [(s["source"], s["status"]) for s in summary["sources"]] == [("civitai", "ok"), ("hf", "ok")]
    assert summary["sources"][0]["summary"]["models"] > 0 and summary["sources"][1]["summary"]["listed"] > 0
    code, report = _check(registry_db)
    assert all(s["healthy"] for s in report["sources"])  # both crawled just now
    # the fixture Hub lacks the mirrors data/ marks deleted, as the real Hub does, and serves a live mirror of
    # each official checkpoint: healthy (counting the known-deleted ones made this check fail for ever)
    assert (code, report["reasons"], report["officials_gone"]) == (0, [], [])
    # Civitai down: Civitai fails, the Hub is still crawled, exit 1, and the health check says why
    env["INPAINT_ADVISOR_CIVITAI_URL"] = "http://127.0.0.1:9"
    failed = run_cli("crawl", "all", "--json", "--retries", "2", "--backoff", "0", env=env)
    summary = json.loads(failed.stdout)
    assert failed.returncode == 1 and not summary["ok"]
    assert [(s["source"], s["status"]) for s in summary["sources"]] == [("civitai", "failed"), ("hf", "ok")]
    human = run_cli("crawl", "all", "--retries", "2", "--backoff", "0", env=env)
    assert human.returncode == 1 and "failed" in human.stdout and "run the same command again" in human.stdout
    code, report = _check(registry_db)
    assert code == 1 and any(r.startswith("civitai: the last crawl failed") for r in report["reasons"])


def _official(repo: str, alive: bool, role: str = "inpaint") -> OfficialCheck:
    return OfficialCheck(id=f"sd1:{role}:{repo}", family="sd1", role=role, repo=repo,
                         file="sd-v1-5-inpainting.ckpt", alive=alive, matches=alive,
                         detail="ok" if alive else "repo deleted", checked_at=datetime.now(UTC))  # fmt: skip


def test_a_mirror_known_to_be_deleted_is_not_news_and_one_live_mirror_keeps_the_checkpoint_healthy(registry_db):
    engine = registry.open(registry_db)
    dead_in_data, live_in_data = "runwayml/stable-diffusion-inpainting", "sd-legacy/stable-diffusion-inpainting"
    engine.save_official_checks([_official(dead_in_data, False), _official(live_in_data, True)])
    assert health.check(engine, timedelta(days=1)).officials_gone == []
    # a mirror data/ expects alive is gone, and so is every other: that is news
    engine.save_official_checks([_official(dead_in_data, False), _official(live_in_data, False)])
    gone = health.check(engine, timedelta(days=1)).officials_gone
    assert gone == [f"sd1 inpaint: {live_in_data}/sd-v1-5-inpainting.ckpt (repo deleted)"]


def test_asking_for_a_deleted_mirror_names_the_live_one(tmp_path):
    from advisor.advice.lookup import lookup

    answer = lookup("runwayml/stable-diffusion-inpainting", db=str(tmp_path / "none.db"), offline=True)
    assert answer.recommendation.kind == "already-inpainting"
    assert any("deleted from the Hub" in w and "stable-diffusion-v1-5/stable-diffusion-inpainting" in w
               for w in answer.warnings)  # fmt: skip
