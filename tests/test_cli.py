"""What a new user meets first: help that reads, a version, the tool on PATH, usage errors as JSON."""

import json
import subprocess
import sys

import pytest

from merge import hashing
from tests.conftest import ROOT, cli_env, run_cli
from tests.sd_layouts import write_checkpoint


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("inpaint-advisor ")


@pytest.mark.parametrize("command", [["crawl", "civitai"], ["crawl", "hf"], ["lookup"], ["merge"], ["status"],
                                     ["probe"]])  # fmt: skip
def test_help_reads_at_80_columns(command):
    result = run_cli(*command, "--help", env=cli_env(COLUMNS="80"))
    assert result.returncode == 0 and "Example" in result.stdout
    assert "<bool>" not in result.stdout and "…" not in result.stdout  # no type column, nothing cut
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    if command[0] in ("crawl", "status", "lookup"):
        assert "INPAINT_ADVISOR_DB" in result.stdout.replace("\n", "").replace(" ", "")


USAGE_ERRORS = [["crawl", "civitai", "--url", "not a url"], ["crawl", "hf", "--hf-endpoint", "ftp://x"], ["lookup"],
                ["merge", "-a", "x"], ["crawl", "civitai", "--retries", "0"]]


@pytest.mark.parametrize("args", USAGE_ERRORS)
def test_usage_errors_are_exit_2_and_json_with_json(args):
    plain = run_cli(*args)
    assert plain.returncode == 2 and "Error" in plain.stderr and "Traceback" not in plain.stderr
    as_json = run_cli(*args, "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"]["code"] == "usage"


def test_a_malformed_postgresql_url_is_one_line_that_shows_no_part_of_its_password():
    env = cli_env(INPAINT_ADVISOR_DB="postgresql+psycopg://team:Pa[s3cret]W0rd@127.0.0.1:5432/reg")
    for args in (["status"], ["jobs"], ["lookup", "anything"]):
        plain, as_json = run_cli(*args, env=env), run_cli(*args, "--json", env=env)
        assert plain.returncode == 2 and "Traceback" not in plain.stderr and "s3cret" not in plain.stderr, args
        assert "percent-encoded" in " ".join(plain.stderr.split()), plain.stderr
        assert json.loads(as_json.stdout)["error"]["code"] == "unsupported-registry" and "s3cret" not in as_json.stdout


def test_a_json_option_given_a_value_is_a_json_usage_error():
    done = run_cli("status", "--json=1")
    assert done.returncode == 2 and "--json" in json.loads(done.stdout)["error"]["message"]


def test_status_fits_80_columns(tmp_path, serve):
    from crawler import hf, registry
    from crawler.http import RetryPolicy
    from tests.hf_fake import FakeHub, fixture_hub

    db = str(tmp_path / "registry.db")
    hf.crawl(registry.open(db), endpoint=serve(FakeHub(fixture_hub())), policy=RetryPolicy(attempts=2),
             sleep=lambda s: None)  # fmt: skip
    result = run_cli("status", env=cli_env(INPAINT_ADVISOR_DB=db, COLUMNS="80"))
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and all(len(line) <= 80 for line in lines)
    assert "kandinsky-community/kandinsky-2-2-decoder-inpaint" in result.stdout.replace("\n", "")  # folded, not cut
    assert "…" not in result.stdout and len(lines) < 70


def test_an_unwritable_or_corrupt_hash_cache_loses_no_hash(tmp_path, read_only_dir, monkeypatch):
    f = tmp_path / "m.safetensors"
    write_checkpoint(f, "sd1", "normal", 1)
    locked = read_only_dir(lambda folder: None)
    home_cache = tmp_path / "home-cache"
    monkeypatch.setattr(hashing, "user_cache_dir", lambda *a, **k: str(home_cache))
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(locked))
    warnings: list[str] = []
    first = hashing.file_hashes(f, warn=warnings.append)
    assert warnings and f"{locked} not writable" in warnings[0] and str(home_cache) in warnings[0]
    assert hashing.cached(f) == first  # kept in the fallback folder
    (home_cache / "hashes.json").write_text("[not, json")  # corrupt
    assert hashing.cached(f) is None
    assert hashing.file_hashes(f) == first
    (home_cache / "hashes.json").write_text('{"x": [1, 2], "y": {"sha256": 5}}')  # valid JSON, wrong shapes
    assert hashing.cached(f) is None and hashing.file_hashes(f) == first


def test_probe_with_an_unwritable_cache_warns_and_still_hashes(tmp_path, read_only_dir):
    f = tmp_path / "m.safetensors"
    write_checkpoint(f, "sd1", "normal", 1)
    locked = read_only_dir(lambda folder: None)
    result = run_cli("probe", str(f), "--hash", "--json", env=cli_env(INPAINT_ADVISOR_CACHE=str(locked),
                                                                       XDG_CACHE_HOME=str(locked)))  # fmt: skip
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["sha256"] and any("could not be cached" in w for w in data["warnings"])


def test_tasks_setup_says_how_to_reach_the_command():
    out = subprocess.run([sys.executable, str(ROOT / "tasks.py"), "where"], capture_output=True, text=True)
    assert out.returncode == 0 and ".venv/bin/inpaint-advisor" in out.stdout and "activate" in out.stdout
