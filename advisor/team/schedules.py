"""Crawls on a timer: a systemd user timer where the user's service manager runs, else a crontab block.

Both run `schedule run` (`crawl all` one scheduled crawl at a time): incremental every ``every``, full on the
calendar every ``full_every``, with the same registry and endpoints as the shell that installed them. Every
value written into a unit or a crontab is checked (no control characters: it would end the line it is
written on) and quoted for that format. Tokens are never written there: `schedule run` reads them from
``~/.config/inpaint-advisor/crawl.env`` as KEY=VALUE data (never run by a shell), a private file the user
keeps. Installing again replaces what an earlier install wrote; an install that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from advisor.advice import Command
from data import settings
from data.errors import InpaintAdvisorError
from data.settings import scrub

UNIT = "inpaint-advisor-crawl"
FULL_UNIT = "inpaint-advisor-crawl-full"
TIMERS = (f"{UNIT}.timer", f"{FULL_UNIT}.timer")
BEGIN, END = "# >>> inpaint-advisor schedule >>>", "# <<< inpaint-advisor schedule <<<"
BOOT_DELAY = 900  # seconds after boot before the first incremental crawl
ENV_TEMPLATE = """\
# inpaint-advisor: settings for scheduled crawls, read as data at each run (never run by a shell).
# One KEY=VALUE a line; quotes around a value are removed, nothing else is expanded.
# CIVITAI_API_TOKEN=
# HF_TOKEN=
"""


class ScheduleError(InpaintAdvisorError):
    """A schedule that cannot be installed, run or removed as asked; ``code`` names the kind."""

    code = "schedule-failed"


@dataclass
class Installed:
    backend: str  # systemd | cron
    files: list[str] = field(default_factory=list)  # written (systemd units)
    lines: list[str] = field(default_factory=list)  # the crontab block
    commands: list[Command] = field(default_factory=list)  # what was run
    notes: list[str] = field(default_factory=list)


def _config_home() -> tuple[Path, str]:
    """The user config dir, and the setting it comes from (for messages)."""
    configured = settings.current().config_home
    if configured:
        return Path(configured), "XDG_CONFIG_HOME"
    return Path.home() / ".config", "HOME"


def env_file() -> Path:
    return Path(os.path.abspath(_config_home()[0] / "inpaint-advisor" / "crawl.env"))


def unit_dir() -> Path:
    return _config_home()[0] / "systemd" / "user"


def state_dir() -> Path:
    """Where scheduled crawls keep their log (cron) and the lock that runs them one at a time."""
    return Path(os.path.abspath(Path.home() / ".cache" / "inpaint-advisor"))


def program() -> list[str]:
    """How a timer starts this very installation: its interpreter and module, whatever PATH says then."""
    return [sys.executable, "-m", "advisor"]


def carried_env() -> dict[str, str]:
    """The settings that make the scheduled crawl use this shell's registry and endpoints (no tokens)."""
    env = settings.carried()
    db = env.get("INPAINT_ADVISOR_DB")
    if db and "://" not in db:
        env["INPAINT_ADVISOR_DB"] = os.path.abspath(os.path.expanduser(db))  # a timer does not run in this folder
    elif db and scrub(db) != db:  # a password in the registry's URL: a secret, never written into a schedule
        raise ScheduleError("INPAINT_ADVISOR_DB holds a password, which a schedule never carries: put it in "
                            "~/.pgpass, or PGPASSWORD=... in the crawl.env file, and install again", "bad-setting")
    return env


# -- what may be written ------------------------------------------------------------------------------------------
_NAMED = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL byte"}


def check(name: str, value: str) -> str:
    """``value``, or a ScheduleError naming ``name`` where it holds what no schedule line can carry: a control
    character (a newline would end the line and start another: a crontab job, a unit directive), a line or
    paragraph separator, or text that has no UTF-8 (a lone surrogate)."""
    for ch in value:
        kind = unicodedata.category(ch)
        if kind in ("Cc", "Cs", "Zl", "Zp"):
            what = _NAMED.get(ch) or ("text that is not UTF-8" if kind == "Cs" else f"the character U+{ord(ch):04X}")
            raise ScheduleError(f"{name} holds {what}, which a schedule cannot carry (it would end the line it is "
                                f"written on): fix {name} and install again", "bad-setting")  # fmt: skip
    return value


def _checked_env(env: dict[str, str]) -> dict[str, str]:
    return {k: check(k, v) for k, v in sorted(env.items())}


def _run_args(incremental: bool) -> list[str]:
    """The scheduled command after the program: what `schedule run` needs, the env file named outright (the
    scheduler's own environment may not be this shell's)."""
    return ["schedule", "run", "--incremental" if incremental else "--full", "--env-file",
            check(_config_home()[1], str(env_file())), "--json"]  # fmt: skip


def _program() -> list[str]:
    return [check("the interpreter path (sys.executable)", a) for a in program()]


# -- systemd ------------------------------------------------------------------------------------------------------
_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def systemd_word(arg: str, program: bool = False) -> str:
    """One ExecStart word as systemd reads it back: `%` (specifiers) doubled, and `$` (variables) in an
    argument (the program path is not expanded), quoted with C escapes where it holds anything but plain
    characters."""
    arg = arg.replace("%", "%%") if program else arg.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_BARE.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_env(key: str, value: str) -> str:
    """An ``Environment=`` line: quoted, C escapes for ``\\`` and ``"``, `%` doubled (no variables there)."""
    value = value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{key}={value}"'


def _executable(path: str) -> str:
    # systemd refuses quotes and backslashes in a program path however they are escaped (string_is_safe)
    if not path.startswith("/") or any(c in path for c in "\"'\\"):
        raise ScheduleError(f"systemd cannot start {path!r}: a program path must be absolute, without quotes or "
                            "backslashes (use --backend cron, or a venv at a plainer path)", "bad-setting")  # fmt: skip
    return systemd_word(path, program=True)


def calendar(period: timedelta) -> tuple[str, str]:
    """A period as calendar times: (crontab fields, systemd OnCalendar=), for minutes dividing an hour, hours
    dividing a day, one day or one week."""
    s = int(period.total_seconds())
    m = s // 60
    if s <= 0 or s % 60:
        pass
    elif m < 60 and 60 % m == 0:
        return f"*/{m} * * * *", f"*-*-* *:00/{m}:00"
    elif m == 24 * 60:
        return "7 3 * * *", "*-*-* 03:07:00"
    elif m % 60 == 0 and 24 % (m // 60) == 0:
        return f"7 */{m // 60} * * *", f"*-*-* 00/{m // 60}:07:00"
    elif m == 7 * 24 * 60:
        return "37 3 * * 0", "Sun *-*-* 03:37:00"
    raise ScheduleError(f"{_human(period)} is not a calendar period: choose minutes dividing an hour, hours "
                        "dividing a day, 1d or 7d", "usage")  # fmt: skip


def units(every: timedelta, full_every: timedelta, env: dict[str, str] | None = None) -> dict[str, str]:
    """File name -> content of the four user units. The incremental timer runs ``every`` from boot (15 min
    after it, then ``every`` after each run); the full one on the calendar only (Persistent: one missed while
    the machine was off runs at the next boot); `schedule run` keeps them from running side by side."""
    env = _checked_env(carried_env() if env is None else env)
    exe, *rest = _program()
    start = [_executable(exe), *(systemd_word(a) for a in rest)]
    try:
        full_calendar = calendar(full_every)[1]
    except ScheduleError:
        raise ScheduleError(f"the full crawl runs on the calendar: --full-every {_human(full_every)} is not a "
                            "calendar period (choose minutes dividing an hour, hours dividing a day, 1d or 7d)",
                            "usage") from None  # fmt: skip
    out = {}
    for name, what, incremental in ((UNIT, "incremental crawl", True), (FULL_UNIT, "full crawl", False)):
        exec_start = " ".join([*start, *(systemd_word(a) for a in _run_args(incremental))])
        env_lines = "".join(systemd_env(k, v) + "\n" for k, v in env.items())
        out[f"{name}.service"] = (
            f"[Unit]\nDescription=inpaint-advisor: {what} of every source (Civitai, Hugging Face)\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            f"[Service]\nType=oneshot\n{env_lines}ExecStart={exec_start}\nNice=10\n"
        )
    seconds = int(every.total_seconds())
    out[f"{UNIT}.timer"] = (
        f"[Unit]\nDescription=inpaint-advisor: incremental crawl every {_human(every)}\n\n"
        f"[Timer]\nOnBootSec={min(seconds, BOOT_DELAY)}s\nOnUnitActiveSec={seconds}s\nRandomizedDelaySec=60s\n"
        f"Unit={UNIT}.service\n\n[Install]\nWantedBy=timers.target\n"
    )
    out[f"{FULL_UNIT}.timer"] = (
        f"[Unit]\nDescription=inpaint-advisor: full crawl every {_human(full_every)}\n\n"
        f"[Timer]\nOnCalendar={full_calendar}\nPersistent=true\nRandomizedDelaySec=60s\n"
        f"Unit={FULL_UNIT}.service\n\n[Install]\nWantedBy=timers.target\n"
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
    try:
        result = subprocess.run(command.plain_argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScheduleError(f"{' '.join(command.plain_argv)} failed: {exc}") from None
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())[:300]
        raise ScheduleError(f"{' '.join(command.plain_argv)} failed: {detail or f'exit {result.returncode}'}")
    return result


def _ours() -> list[Path]:
    """Every path an install may leave: the four units and the links `systemctl enable` makes."""
    folder = unit_dir()
    names = [f"{UNIT}.service", f"{UNIT}.timer", f"{FULL_UNIT}.service", f"{FULL_UNIT}.timer"]
    return [folder / n for n in names] + [folder / "timers.target.wants" / t for t in TIMERS]


def _snapshot(paths: list[Path]) -> dict[Path, bytes | str | None]:
    """What each path holds now: bytes, a link's target, or None where there is nothing."""
    out: dict[Path, bytes | str | None] = {}
    for path in paths:
        if path.is_symlink():
            out[path] = os.readlink(path)
        elif path.exists():
            out[path] = path.read_bytes()
        else:
            out[path] = None
    return out


def _restore(before: dict[Path, bytes | str | None]) -> list[str]:
    """Put every path back as ``before`` had it; the paths that could not be, as messages."""
    failed = []
    for path, was in before.items():
        try:
            if path.is_symlink() or path.exists():
                if _snapshot([path])[path] == was:
                    continue
                path.unlink()
            if isinstance(was, str):
                path.symlink_to(was)
            elif isinstance(was, bytes):
                path.write_bytes(was)
        except OSError as exc:
            failed.append(f"{path}: {exc.strerror or exc}")
    return failed


def _install_systemd(every: timedelta, full_every: timedelta) -> Installed:
    done = Installed("systemd")
    texts = units(every, full_every)  # every value checked before anything is written
    folder = unit_dir()
    made = [p for p in (folder.parent.parent, folder.parent, folder) if not p.exists()]
    before = _snapshot(_ours())
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in texts.items():
                path = folder / name
                staged = path.with_name(f".{name}.tmp")
                staged.write_text(text, encoding="utf-8")
                os.replace(staged, path)
                done.files.append(str(path))
        except OSError as exc:
            raise ScheduleError(f"cannot write the units in {folder}: {exc.strerror or exc}") from None
        _run(Command(["systemctl", "--user", "daemon-reload"]), done)
        _run(Command(["systemctl", "--user", "enable", "--now", *TIMERS]), done)
    except ScheduleError as exc:
        left = _restore(before)
        for name in texts:
            with contextlib.suppress(OSError):
                (folder / f".{name}.tmp").unlink()
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()  # only if still empty
        if any(v is not None for v in before.values()):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # the earlier units are back: reload
                subprocess.run(["systemctl", "--user", "daemon-reload"], capture_output=True, timeout=60)
        undone = f"; could not undo: {'; '.join(left)}" if left else \
            ("; the earlier schedule is back" if any(v is not None for v in before.values())
             else "; nothing was left installed")  # fmt: skip
        raise ScheduleError(f"{exc}{undone}", exc.code) from None
    linger = subprocess.run(["loginctl", "show-user", _user(), "-p", "Linger", "--value"], capture_output=True,
                            text=True) if shutil.which("loginctl") else None  # fmt: skip
    if linger is not None and linger.stdout.strip() == "no":
        done.notes.append(f"the timers run only while you are logged in: `loginctl enable-linger {_user()}` "
                          "keeps them running after you log out")  # fmt: skip
    return done


def _remove_systemd() -> Installed:
    """Stop and delete what an install wrote: the files go even where systemctl cannot be reached (no user
    bus), and the notes say what could not be stopped."""
    done = Installed("systemd")
    present = [t for t in TIMERS if (unit_dir() / t).exists() or (unit_dir() / "timers.target.wants" / t).is_symlink()]
    if present:
        try:
            _run(Command(["systemctl", "--user", "disable", "--now", *present]), done)
        except ScheduleError as exc:
            done.notes.append(f"could not stop {', '.join(present)} ({exc}): the files are deleted, so they do not "
                              "start again once the user manager reloads (at your next log-in)")  # fmt: skip
    for path in _ours():
        if path.is_symlink() or path.exists():
            try:
                path.unlink()
                done.files.append(str(path))
            except OSError as exc:
                done.notes.append(f"could not delete {path}: {exc.strerror or exc}")
    if done.files:
        try:
            _run(Command(["systemctl", "--user", "daemon-reload"]), done)
        except ScheduleError as exc:
            done.notes.append(f"could not reload the user manager ({exc}): it forgets the units at its next start")
    return done


def _user() -> str:
    import getpass

    return getpass.getuser()


# -- cron ---------------------------------------------------------------------------------------------------------
def cron_spec(period: timedelta) -> str:
    """The crontab time fields for a period cron can express (minutes dividing an hour, hours dividing a
    day, one day, one week)."""
    try:
        return calendar(period)[0]
    except ScheduleError:
        raise ScheduleError(f"cron cannot run every {_human(period)}: choose minutes dividing an hour, hours "
                            "dividing a day, 1d or 7d", "usage") from None  # fmt: skip


_CRON_BARE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def cron_word(arg: str) -> str:
    """One word of a crontab command: POSIX-quoted for the shell cron hands it to, every `%` outside the
    quotes as `\\%` (cron reads a bare `%` as the end of the command; `\\%` gives the shell a plain `%`)."""
    if _CRON_BARE.fullmatch(arg):
        return arg
    return "\\%".join("'" + part.replace("'", "'\\''") + "'" if part else "" for part in arg.split("%")) or "''"


def cron_lines(every: timedelta, full_every: timedelta, env: dict[str, str] | None = None) -> list[str]:
    env = _checked_env(carried_env() if env is None else env)
    prefix = "".join(f"{k}={cron_word(v)} " for k, v in env.items())
    run = " ".join(cron_word(a) for a in _program())
    log = cron_word(check("HOME", str(state_dir() / "crawl.log")))
    lines = [BEGIN]
    for spec, incremental in ((cron_spec(every), True), (cron_spec(full_every), False)):
        args = " ".join(cron_word(a) for a in _run_args(incremental))
        lines.append(f"{spec} {prefix}{run} {args} >> {log} 2>&1")
    lines.append(END)
    return lines


def _crontab_binary() -> str:
    found = shutil.which("crontab")
    if found is None:
        raise ScheduleError("crontab is not installed here: install cron, or have your own scheduler run "
                            "`inpaint-advisor schedule run`", "no-scheduler")  # fmt: skip
    return found


def _crontab() -> list[str]:
    try:
        result = subprocess.run([_crontab_binary(), "-l"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScheduleError(f"crontab -l failed: {exc}") from None
    if result.returncode == 0:
        return result.stdout.splitlines()
    if "no crontab" in result.stderr.lower():
        return []  # none yet
    # anything else: never write a crontab over one that could not be read
    raise ScheduleError(f"crontab -l failed: {' '.join(result.stderr.split())[:300] or result.returncode}")


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
    try:
        result = subprocess.run([_crontab_binary(), "-"], input="\n".join(lines) + "\n", capture_output=True,
                                text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScheduleError(f"crontab - failed: {exc}") from None
    if result.returncode != 0:
        raise ScheduleError(f"crontab - failed: {' '.join(result.stderr.split())[:300]}")


def _install_cron(every: timedelta, full_every: timedelta) -> Installed:
    done = Installed("cron")
    done.lines = cron_lines(every, full_every)  # every value checked before anything is written
    current = _crontab()
    try:
        state_dir().mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScheduleError(f"cannot create {state_dir()} for the crawl log: {exc.strerror or exc}") from None
    _write_crontab(_without_block(current) + done.lines, done)
    return done


# -- the environment file -----------------------------------------------------------------------------------------
_ENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as data: blank lines and `#` or `;` comments skipped, `export ` allowed, one pair of
    matching quotes around a value removed; nothing is expanded or run. A line that is none of these is an
    error naming its number (never its text: it may hold a token)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", "bad-setting") from None
    values = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        match = _ENV_LINE.fullmatch(line)
        if match is None or "\x00" in line:
            raise ScheduleError(f"{path} line {number} is not KEY=VALUE", "bad-setting")
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def _create_env_file(done: Installed) -> None:
    """The token file, created private (mode 0600 from the start: never readable by others, even briefly)."""
    path = env_file()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            done.notes.append(f"{path} can be read by others (mode {mode:03o}): `chmod 600 {shlex.quote(str(path))}`")
        return
    except OSError as exc:
        done.notes.append(f"could not create {path} for the tokens: {exc.strerror or exc}")
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(ENV_TEMPLATE)
    done.notes.append(f"tokens (CIVITAI_API_TOKEN=..., HF_TOKEN=...) go in {path} (created, private), one per "
                      "line; they are read from there at each run, never written into the schedule")  # fmt: skip


def take_turn(full: bool) -> int | None:
    """One scheduled crawl at a time (a lock file in `state_dir`): a full crawl waits for the one running, an
    incremental one gives way (None) - the full crawl reads everything the incremental one would. The lock's
    file descriptor otherwise: closing it ends the turn."""
    import fcntl

    path = state_dir() / "schedule.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ScheduleError(f"cannot open the schedule's lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if full else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def turn(full: bool) -> Iterator[bool]:
    """``take_turn`` as a context: True while this crawl's turn lasts, False where an incremental one gives way."""
    fd = take_turn(full)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


# -- the commands -------------------------------------------------------------------------------------------------
def backend(choice: str = "auto") -> str:
    if choice in ("systemd", "cron"):
        return choice
    if systemd_available():
        return "systemd"
    if shutil.which("crontab"):
        return "cron"
    raise ScheduleError("neither a systemd user manager nor crontab is available here: have your own scheduler "
                        "run `inpaint-advisor schedule run`", "no-scheduler")  # fmt: skip


def _units_present() -> bool:
    return any(p.is_symlink() or p.exists() for p in _ours())


def install(every: timedelta, full_every: timedelta, choice: str = "auto") -> Installed:
    if every <= timedelta(0) or full_every <= timedelta(0):
        raise ScheduleError("periods must be positive", "usage")
    kind = backend(choice)
    if kind == "cron":
        _crontab_binary()
    done = _install_systemd(every, full_every) if kind == "systemd" else _install_cron(every, full_every)
    _create_env_file(done)
    return done


def remove(choice: str = "auto") -> Installed:
    """Remove what an install wrote. ``auto`` removes units wherever they are on disk (a user manager that does
    not answer does not keep them there), else the crontab block."""
    if choice == "systemd" or (choice == "auto" and _units_present()):
        return _remove_systemd()
    if choice == "auto" and not shutil.which("crontab"):
        return Installed("systemd" if systemd_available() else "cron")  # nothing of ours anywhere
    done = Installed("cron")
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
    kind = "systemd" if choice == "auto" and _units_present() else backend(choice)
    if kind == "cron":
        current = _crontab()
        block = current[current.index(BEGIN):] if BEGIN in current else []
        block = block[:block.index(END) + 1] if END in block else block
        return Shown("cron", bool(block), block, {})
    files = [str(p) for p in _ours()[:4] if p.exists()]
    nexts = {}
    for timer in TIMERS:
        try:
            result = subprocess.run(["systemctl", "--user", "show", timer, "-p", "NextElapseUSecRealtime",
                                     "--value"], capture_output=True, text=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip():
            nexts[timer] = result.stdout.strip()
    return Shown("systemd", bool(files), files, nexts)


def _human(period: timedelta) -> str:
    s = int(period.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s % size == 0:
            return f"{s // size} {unit}"
    return f"{s} s"
