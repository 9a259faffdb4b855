"""`schedule install|show|remove`: systemd user units (checked by systemd-analyze where it exists) or a crontab
block, with fake `systemctl`, `loginctl` and `crontab` on PATH that record what they were asked."""

import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import timedelta

import pytest

from advisor import schedule
from tests.conftest import cli_env, run_cli

FAKES = {
    "systemctl": """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *show-environment*) [ -n "$FAKE_NO_SYSTEMD" ] && exit 1; echo PATH=/usr/bin ;;
  *NextElapseUSecRealtime*) echo "Wed 2026-12-02 08:00:00 UTC" ;;
esac
""",
    "loginctl": """#!/bin/sh
echo no
""",
    "crontab": """#!/bin/sh
echo "crontab $*" >> "$FAKE_LOG"
if [ "$1" = "-l" ]; then
  [ -f "$FAKE_CRONTAB" ] && cat "$FAKE_CRONTAB" && exit 0
  echo "no crontab for you" >&2; exit 1
fi
cat > "$FAKE_CRONTAB"
""",
}


@pytest.fixture
def host(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = cli_env(PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path / "home"),
                  XDG_CONFIG_HOME=str(tmp_path / "config"), FAKE_LOG=str(tmp_path / "calls.log"),
                  FAKE_CRONTAB=str(tmp_path / "crontab"), INPAINT_ADVISOR_DB=str(tmp_path / "reg.db"),
                  CIVITAI_API_TOKEN="secret-token-123", HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    (tmp_path / "home").mkdir()
    return tmp_path, env


def calls(tmp) -> list[str]:
    log = tmp / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_systemd_units_are_written_enabled_idempotent_and_removed(host):
    tmp, env = host
    first = run_cli("schedule", "install", "--every", "3h", "--json", env=env)
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    units = tmp / "config" / "systemd" / "user"
    assert done["backend"] == "systemd" and sorted(p.name for p in units.iterdir()) == [
        "inpaint-advisor-crawl-full.service", "inpaint-advisor-crawl-full.timer", "inpaint-advisor-crawl.service",
        "inpaint-advisor-crawl.timer"]  # fmt: skip
    service = (units / "inpaint-advisor-crawl.service").read_text()
    assert f"ExecStart={sys.executable} -m advisor crawl all --incremental --json" in service
    assert f'Environment="INPAINT_ADVISOR_DB={tmp / "reg.db"}"' in service
    assert 'Environment="HF_ENDPOINT=http://127.0.0.1:9"' in service
    assert "secret-token-123" not in "".join(p.read_text() for p in units.iterdir())  # tokens never stored
    assert f"EnvironmentFile=-{tmp / 'config' / 'inpaint-advisor' / 'crawl.env'}" in service
    assert "OnUnitActiveSec=10800s" in (units / "inpaint-advisor-crawl.timer").read_text()
    assert "OnUnitActiveSec=604800s" in (units / "inpaint-advisor-crawl-full.timer").read_text()
    assert "--user daemon-reload" in calls(tmp) and \
        "--user enable --now inpaint-advisor-crawl.timer inpaint-advisor-crawl-full.timer" in calls(tmp)  # fmt: skip
    assert any("enable-linger" in n for n in done["notes"]) and any("crawl.env" in n for n in done["notes"])
    before = {p.name: p.read_text() for p in units.iterdir()}
    assert run_cli("schedule", "install", "--every", "3h", env=env).returncode == 0
    assert {p.name: p.read_text() for p in units.iterdir()} == before  # the same install again: the same files
    shown = json.loads(run_cli("schedule", "show", "--json", env=env).stdout)
    assert shown["installed"] and shown["next_runs"]["inpaint-advisor-crawl.timer"].startswith("Wed 2026-12-02")
    removed = run_cli("schedule", "remove", env=env)
    assert removed.returncode == 0 and list(units.iterdir()) == []
    assert "--user disable --now inpaint-advisor-crawl.timer inpaint-advisor-crawl-full.timer" in calls(tmp)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_generated_units_pass_systemd_analyze_verify(tmp_path):
    env = {"INPAINT_ADVISOR_DB": "/models/my registry/100%.db", "HF_ENDPOINT": 'http://h/"x"'}
    for name, text in schedule.units(timedelta(hours=6), timedelta(days=7), env).items():
        (tmp_path / name).write_text(text)
    files = sorted(str(p) for p in tmp_path.iterdir())
    result = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (tmp_path / "broken.service").write_text("[Service]\nType=bogus\nExecStart=relative/path\n")  # the control
    assert subprocess.run(["systemd-analyze", "verify", str(tmp_path / "broken.service")],
                          capture_output=True).returncode != 0  # fmt: skip
    assert "100%%.db" in (tmp_path / "inpaint-advisor-crawl.service").read_text()  # % escaped for systemd


def test_without_systemd_a_crontab_block_is_kept_beside_the_users_own_lines(host):
    tmp, env = host
    env["FAKE_NO_SYSTEMD"] = "1"
    (tmp / "crontab").write_text("0 1 * * * my-own-backup\n")
    first = run_cli("schedule", "install", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["backend"] == "cron"
    table = (tmp / "crontab").read_text().splitlines()
    assert table[0] == "0 1 * * * my-own-backup" and table[1] == schedule.BEGIN and table[-1] == schedule.END
    incremental, full = table[2], table[3]
    assert incremental.startswith("7 */6 * * * ") and "crawl all --incremental --json" in incremental
    assert full.startswith("37 3 * * 0 ") and "crawl all --json" in full
    assert "secret-token-123" not in "\n".join(table) and "crawl.env" in incremental
    assert run_cli("schedule", "install", env=env).returncode == 0
    assert (tmp / "crontab").read_text().splitlines() == table  # idempotent: one block
    shown = json.loads(run_cli("schedule", "show", "--json", env=env).stdout)
    assert shown["installed"] and shown["entries"] == table[1:]
    assert run_cli("schedule", "remove", env=env).returncode == 0
    assert (tmp / "crontab").read_text().splitlines() == ["0 1 * * * my-own-backup"]


@pytest.mark.parametrize("every, spec", [("15m", "*/15 * * * *"), ("6h", "7 */6 * * *"), ("1d", "7 3 * * *"),
                                         ("7d", "37 3 * * 0")])  # fmt: skip
def test_cron_periods(every, spec):
    from advisor.cli.common import duration

    assert schedule.cron_spec(duration(every)) == spec


def test_a_period_cron_cannot_express_is_a_usage_error(host):
    tmp, env = host
    env["FAKE_NO_SYSTEMD"] = "1"
    result = run_cli("schedule", "install", "--every", "5h", "--json", env=env)
    assert result.returncode == 2 and json.loads(result.stdout)["error"]["code"] == "usage"
    assert not (tmp / "crontab").exists()
