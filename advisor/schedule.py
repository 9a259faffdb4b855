"""Crawls on a timer: a systemd user timer where the user's service manager runs, else a crontab block.

Both run `crawl all --incremental` every ``every`` and a full `crawl all` every ``full_every``, with the same
registry and endpoints as the shell that installed them. Tokens are never written into a unit or a crontab:
both read them from ``~/.config/inpaint-advisor/crawl.env`` (``CIVITAI_API_TOKEN=...``, ``HF_TOKEN=...``),
a file the user keeps, when it exists. Installing again replaces what an earlier install wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from advisor.commands import Command

UNIT = "inpaint-advisor-crawl"
FULL_UNIT = "inpaint-advisor-crawl-full"
BEGIN, END = "# >>> inpaint-advisor schedule >>>", "# <<< inpaint-advisor schedule <<<"
CARRIED = ("INPAINT_ADVISOR_DB", "INPAINT_ADVISOR_CIVITAI_URL", "HF_ENDPOINT", "INPAINT_ADVISOR_CACHE", "HF_HOME",
           "HF_HUB_CACHE")  # fmt: skip


class ScheduleError(Exception):
    def __init__(self, message: str, code: str = "schedule-failed"):
        super().__init__(message)
        self.code = code


@dataclass
class Installed:
    backend: str  # systemd | cron
    files: list[str] = field(default_factory=list)  # written (systemd units)
    lines: list[str] = field(default_factory=list)  # the crontab block
    commands: list[Command] = field(default_factory=list)  # what was run
    notes: list[str] = field(default_factory=list)


def env_file() -> Path:
    return _config_home() / "inpaint-advisor" / "crawl.env"


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def unit_dir() -> Path:
    return _config_home() / "systemd" / "user"


def program() -> list[str]:
    """How a timer starts this very installation: its interpreter and module, whatever PATH says then."""
    return [sys.executable, "-m", "advisor"]


def carried_env() -> dict[str, str]:
    """The settings that make the scheduled crawl use this shell's registry and endpoints (no tokens)."""
    env = {k: os.environ[k] for k in CARRIED if os.environ.get(k)}
    db = env.get("INPAINT_ADVISOR_DB")
    if db and "://" not in db:
        env["INPAINT_ADVISOR_DB"] = str(Path(db).expanduser().resolve())  # a timer does not run in this folder
    return env


# -- systemd ----------------------------------------------------------------------------------------------------
def _systemd_word(arg: str) -> str:
    """One ExecStart word: quoted where it has spaces or quotes; %, $ escaped (systemd expands them)."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_env(key: str, value: str) -> str:
    value = value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{key}={value}"'


def units(every: timedelta, full_every: timedelta, env: dict[str, str] | None = None) -> dict[str, str]:
    """File name -> content of the four user units."""
    env = carried_env() if env is None else env
    out = {}
    for name, what, args, period in ((UNIT, "incremental crawl", ["--incremental"], every),
                                     (FULL_UNIT, "full crawl", [], full_every)):  # fmt: skip
        exec_start = " ".join(_systemd_word(a) for a in [*program(), "crawl", "all", *args, "--json"])
        env_lines = "".join(_systemd_env(k, v) + "\n" for k, v in sorted(env.items()))
        out[f"{name}.service"] = (
            f"[Unit]\nDescription=inpaint-advisor: {what} of every source (Civitai, Hugging Face)\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            f"[Service]\nType=oneshot\nEnvironmentFile=-{_systemd_word(str(env_file()))}\n{env_lines}"
            f"ExecStart={exec_start}\nNice=10\n"
        )
        seconds = int(period.total_seconds())
        out[f"{name}.timer"] = (
            f"[Unit]\nDescription=inpaint-advisor: {what} every {_human(period)}\n\n"
            f"[Timer]\nOnBootSec={min(seconds, 900)}s\nOnUnitActiveSec={seconds}s\nRandomizedDelaySec=60s\n"
            f"Unit={name}.service\n\n[Install]\nWantedBy=timers.target\n"
        )
    return out


def systemd_available() -> bool:
    """Whether this user's systemd manager answers (not in most containers, nor under plain cron hosts)."""
    if shutil.which("systemctl") is None:
        return False
    try:
        return subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, timeout=10
                              ).returncode == 0  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False


def _run(command: Command, done: Installed) -> subprocess.CompletedProcess:
    done.commands.append(command)
    result = subprocess.run(command.plain_argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())[:300]
        raise ScheduleError(f"{' '.join(command.plain_argv)} failed: {detail or f'exit {result.returncode}'}")
    return result


def _install_systemd(every: timedelta, full_every: timedelta) -> Installed:
    done = Installed("systemd")
    folder = unit_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in units(every, full_every).items():
        path = folder / name
        staged = path.with_name(f".{name}.tmp")
        staged.write_text(text)
        os.replace(staged, path)
        done.files.append(str(path))
    _run(Command(["systemctl", "--user", "daemon-reload"]), done)
    _run(Command(["systemctl", "--user", "enable", "--now", f"{UNIT}.timer", f"{FULL_UNIT}.timer"]), done)
    linger = subprocess.run(["loginctl", "show-user", _user(), "-p", "Linger", "--value"], capture_output=True,
                            text=True) if shutil.which("loginctl") else None  # fmt: skip
    if linger is not None and linger.stdout.strip() == "no":
        done.notes.append(f"the timers run only while you are logged in: `loginctl enable-linger {_user()}` "
                          "keeps them running after you log out")  # fmt: skip
    return done


def _user() -> str:
    import getpass

    return getpass.getuser()


# -- cron --------------------------------------------------------------------------------------------------------
def cron_spec(period: timedelta) -> str:
    """The crontab time fields for a period cron can express (minutes dividing an hour, hours dividing a
    day, one day, one week)."""
    s = int(period.total_seconds())
    if s % 60 or s <= 0:
        raise ScheduleError(f"cron cannot run every {_human(period)}: use whole minutes", "usage")
    m = s // 60
    if m < 60 and 60 % m == 0:
        return f"*/{m} * * * *"
    if m == 24 * 60:
        return "7 3 * * *"
    if m % 60 == 0 and 24 % (m // 60) == 0:
        return f"7 */{m // 60} * * *"
    if m == 7 * 24 * 60:
        return "37 3 * * 0"
    raise ScheduleError(f"cron cannot run every {_human(period)}: choose minutes dividing an hour, hours "
                        "dividing a day, 1d or 7d", "usage")  # fmt: skip


def cron_lines(every: timedelta, full_every: timedelta, env: dict[str, str] | None = None) -> list[str]:
    import shlex

    env = carried_env() if env is None else env
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    source = f"[ -f {shlex.quote(str(env_file()))} ] && set -a && . {shlex.quote(str(env_file()))}; set +a;"
    run = " ".join(shlex.quote(a) for a in [*program(), "crawl", "all"])
    log = shlex.quote(str(Path.home() / ".cache" / "inpaint-advisor" / "crawl.log"))
    lines = [BEGIN]
    for spec, args in ((cron_spec(every), " --incremental"), (cron_spec(full_every), "")):
        lines.append(f"{spec} {source} {prefix + ' ' if prefix else ''}{run}{args} --json >> {log} 2>&1"
                     .replace("%", "\\%"))  # fmt: skip
    lines.append(END)
    return lines


def _crontab() -> list[str]:
    result = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else []  # no crontab yet: exit 1


def _without_block(lines: list[str]) -> list[str]:
    out, inside = [], False
    for line in lines:
        if line == BEGIN:
            inside = True
        elif line == END:
            inside = False
        elif not inside:
            out.append(line)
    return out


def _write_crontab(lines: list[str], done: Installed) -> None:
    command = Command(["crontab", "-"])
    done.commands.append(command)
    result = subprocess.run(command.plain_argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if result.returncode != 0:
        raise ScheduleError(f"crontab - failed: {' '.join(result.stderr.split())[:300]}")


def _install_cron(every: timedelta, full_every: timedelta) -> Installed:
    done = Installed("cron")
    done.lines = cron_lines(every, full_every)
    (Path.home() / ".cache" / "inpaint-advisor").mkdir(parents=True, exist_ok=True)
    _write_crontab(_without_block(_crontab()) + done.lines, done)
    return done


# -- the commands --------------------------------------------------------------------------------------------------
def backend(choice: str = "auto") -> str:
    if choice in ("systemd", "cron"):
        return choice
    if systemd_available():
        return "systemd"
    if shutil.which("crontab"):
        return "cron"
    raise ScheduleError("neither a systemd user manager nor crontab is available here: run `inpaint-advisor "
                        "crawl all --incremental` from your own scheduler", "no-scheduler")  # fmt: skip


def install(every: timedelta, full_every: timedelta, choice: str = "auto") -> Installed:
    if every <= timedelta(0) or full_every <= timedelta(0):
        raise ScheduleError("periods must be positive", "usage")
    kind = backend(choice)
    done = _install_systemd(every, full_every) if kind == "systemd" else _install_cron(every, full_every)
    if not env_file().exists():
        done.notes.append(f"tokens (CIVITAI_API_TOKEN=..., HF_TOKEN=...) go in {env_file()}, one per line; "
                          "they are read from there, never written into the schedule")  # fmt: skip
    return done


def remove(choice: str = "auto") -> Installed:
    kind = backend(choice)
    done = Installed(kind)
    if kind == "systemd":
        names = [f"{UNIT}.timer", f"{FULL_UNIT}.timer"]
        present = [n for n in names if (unit_dir() / n).exists()]
        if present:
            _run(Command(["systemctl", "--user", "disable", "--now", *present]), done)
        for name in units(timedelta(hours=1), timedelta(days=1), {}):
            path = unit_dir() / name
            if path.exists():
                path.unlink()
                done.files.append(str(path))
        _run(Command(["systemctl", "--user", "daemon-reload"]), done)
    else:
        current = _crontab()
        if BEGIN in current:
            done.lines = current[current.index(BEGIN):current.index(END) + 1] if END in current else [BEGIN]
            _write_crontab(_without_block(current), done)
    return done


@dataclass
class Shown:
    backend: str
    installed: bool
    entries: list[str]  # timer files or crontab lines
    next_runs: dict[str, str]  # timer -> when (systemd's words)


def show(choice: str = "auto") -> Shown:
    kind = backend(choice)
    if kind == "cron":
        current = _crontab()
        block = current[current.index(BEGIN):] if BEGIN in current else []
        block = block[:block.index(END) + 1] if END in block else block
        return Shown("cron", bool(block), block, {})
    files = [str(unit_dir() / n) for n in units(timedelta(hours=1), timedelta(days=1), {})
             if (unit_dir() / n).exists()]  # fmt: skip
    nexts = {}
    for timer in (f"{UNIT}.timer", f"{FULL_UNIT}.timer"):
        result = subprocess.run(["systemctl", "--user", "show", timer, "-p", "NextElapseUSecRealtime", "--value"],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode == 0 and result.stdout.strip():
            nexts[timer] = result.stdout.strip()
    return Shown("systemd", bool(files), files, nexts)


def _human(period: timedelta) -> str:
    s = int(period.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s % size == 0:
            return f"{s // size} {unit}"
    return f"{s} s"
