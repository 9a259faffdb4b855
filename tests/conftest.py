import contextlib
import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

from merge import fused
from tests import pg, sd_layouts
from tests.civitai_fake import FakeCivitai, Server
from tests.hf_fake import FakeHub, HubServer

ROOT = Path(__file__).resolve().parent.parent

# Fuzz tests are a reproducible gate by default: a fixed seed (`--hypothesis-seed=0` in pyproject's addopts),
# after the examples recorded in tests/fixtures/hypothesis (failures found by exploring, replayed first, never
# rewritten by a plain run). To explore: `pytest --hypothesis-profile=explore --hypothesis-seed=$RANDOM`
# (10x the examples; what fails is recorded into that folder: commit it with the fix).
_EXAMPLES = DirectoryBasedExampleDatabase(ROOT / "tests" / "fixtures" / "hypothesis")
settings.register_profile("gate", database=ReadOnlyDatabase(_EXAMPLES), print_blob=True)
settings.register_profile("explore", database=_EXAMPLES, max_examples=1000)
settings.load_profile("gate")

needs_kernel = pytest.mark.skipif(fused.kernel() is None, reason="merge._fused not built or not usable here")


@pytest.fixture(params=["c-kernel", "torch"])
def arithmetic(request, monkeypatch):
    """Run a merge test on each CPU implementation: the C loop (merge.direct over memory maps, or
    merge.fused over tensors) and torch ops."""
    if request.param == "torch":
        monkeypatch.setattr(fused, "kernel", lambda: None)
        monkeypatch.setenv("INPAINT_ADVISOR_NO_KERNEL", "1")
    elif fused.kernel() is None:
        pytest.skip("merge._fused is not built or not usable on this CPU")
    return request.param


# A merge in a child process (argv: A B C OUT) that reports whether it imported torch: merge.direct needs none
NO_TORCH_MERGE = """
import sys
from merge.engine import merge
from merge.plan import certainly_no_gpu
r = merge(*sys.argv[1:5], device="auto" if certainly_no_gpu() else "cpu")  # auto: settled without torch
print("torch imported:", "torch" in sys.modules, "nonfinite:", r.nonfinite)
"""


def same_bits(x, y) -> bool:
    """Bit for bit, -0.0 and infinities included; a NaN matches any NaN (torch itself stores bf16 NaN as 0xffff
    in its vector loop and 0x7fc0 in its scalar tail)."""
    import torch

    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if not x.is_floating_point():
        return torch.equal(x, y)
    nan = torch.isnan(x)
    if not torch.equal(nan, torch.isnan(y)):
        return False
    view = {torch.float32: torch.int32, torch.float64: torch.int64}.get(x.dtype, torch.int16)
    return torch.equal(x.view(view)[~nan], y.view(view)[~nan])


# Tests talk only to servers they start on 127.0.0.1. Query strings and fixtures do spell real Civitai and Hub
# URLs (parsing them is a feature); these defaults point every client at a closed local port, and the guard
# below refuses any other host, so nothing can reach the real sites even when a test forgets an endpoint.
NOWHERE = "http://127.0.0.1:9"
OFFLINE_ENV = {"INPAINT_ADVISOR_CIVITAI_URL": NOWHERE, "HF_ENDPOINT": NOWHERE, "HF_HUB_DISABLE_TELEMETRY": "1"}
_LOCAL = {"127.0.0.1", "::1", "localhost"}


def _refuse_remote(host) -> None:
    if host not in _LOCAL and host is not None:
        raise ConnectionRefusedError(f"tests may only connect to 127.0.0.1, not {host!r}")


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch):
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        _refuse_remote(host.decode() if isinstance(host, bytes) else host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            _refuse_remote(address[0])
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_db(request, tmp_path):
    """Where a test's registry lives: a SQLite file, or a PostgreSQL database as a fresh registry is (emptied
    back after each test and reused: tests/pg.py). Every test that touches the registry takes this, so that it
    runs on both engines."""
    if request.param == "sqlite":
        yield str(tmp_path / "registry.db")
        return
    with pg.reused_registry() as url:  # a registry already, as registry.connect makes on SQLite
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    """Like ``registry_db``, but on PostgreSQL an empty database (for loading an old registry's dump)."""
    if request.param == "sqlite":
        yield str(tmp_path / "registry.db")
        return
    with pg.fresh_database() as url:
        yield url


_filled: dict[tuple[str, str], tuple[str, object]] = {}  # (engine, key) -> (the filled master, what fill gave)


@pytest.fixture(params=["sqlite", "postgresql"])
def filled_registry(request, tmp_path):
    """``db, made = filled_registry(key, fill)``: a registry as ``fill(db)`` leaves it, and what that call
    returned. ``fill`` runs once per worker and key, into a master kept for the session; each test gets its own
    copy of it (SQLite's backup API, PostgreSQL's CREATE DATABASE ... TEMPLATE), which costs less than a crawl.
    For fixtures whose registry is the setting of many tests, not what they test."""
    copies: list = []

    def get(key: str, fill):
        from crawler.registry.engine import close_all

        if (request.param, key) not in _filled:
            sqlite = request.param == "sqlite"
            master = str(_masters() / f"{len(_filled)}.db") if sqlite else pg.kept_copy_of_template()
            made = fill(master)
            close_all()  # a PostgreSQL template may have no open connection while it is copied
            _filled[request.param, key] = (master, made)
        master, made = _filled[request.param, key]
        if request.param == "sqlite":
            import sqlite3

            db = str(tmp_path / "registry.db")
            with contextlib.closing(sqlite3.connect(master)) as src, contextlib.closing(sqlite3.connect(db)) as dst:
                src.backup(dst)
            return db, made
        copy = pg.fresh_database(template=master)
        copies.append(copy)
        return copy.__enter__(), made

    yield get
    for copy in copies:
        copy.__exit__(None, None, None)


@functools.cache
def _masters() -> Path:
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="inpaint-advisor-masters-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@pytest.fixture
def read_only_dir(tmp_path):
    """``make(fill)``: a folder that ``fill(folder)`` writes into, then made truly unwritable: a read-only bind
    mount as root (permission bits do not stop root), mode 0555 otherwise."""
    mounted = []

    def make(fill) -> Path:
        folder = tmp_path / f"ro{len(mounted)}"
        folder.mkdir()
        fill(folder)
        if os.geteuid() == 0:
            for cmd in (["mount", "--bind", str(folder), str(folder)],
                        ["mount", "-o", "remount,ro,bind", str(folder)]):  # fmt: skip
                if subprocess.run(cmd, capture_output=True).returncode != 0:
                    pytest.skip("no way to make a read-only folder here (root without mount)")
            mounted.append(folder)
        else:
            folder.chmod(0o555)
        return folder

    yield make
    from crawler.registry.engine import close_all

    close_all()  # an engine still open on a file in the mount keeps it busy
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # detached once no longer busy


def registry_text(db: str) -> str:
    """Everything the registry stores, as text: its files on SQLite, every row on PostgreSQL."""
    if "://" in db:
        return pg.all_text(db)
    return "\n".join(p.read_bytes().decode("latin-1") for p in Path(db).parent.iterdir() if p.is_file())


@pytest.fixture
def serve():
    """``url = serve(fake)``: run a fake Civitai or Hugging Face Hub on 127.0.0.1 for the rest of the test."""
    servers = []

    def start(fake: FakeCivitai | FakeHub) -> str:
        server = HubServer(fake) if isinstance(fake, FakeHub) else Server(fake)
        servers.append(server)
        return server.__enter__()

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def option(command, flag: str) -> str:
    """The value after ``flag`` in a structured command's argv."""
    return command.argv[command.argv.index(flag) + 1]


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPAINT_ADVISOR_", "CIVITAI_", "HF_"))}
    env.update({"PYTHONPATH": str(ROOT), "COLUMNS": "200", **OFFLINE_ENV, **extra})
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 120, cwd: str | Path | None = None,
            fresh: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """The real console entry point in a child process, as a user would run it: its own environment, working
    directory, output and exit status. The child is forked from a warm zygote (tests/cli_zygote.py), which saves
    a second of interpreter start and imports per call; ``fresh=True`` starts a new interpreter instead
    (`python -m advisor`), for what depends on the start itself."""
    env = env or cli_env()
    if fresh:
        return subprocess.run([sys.executable, "-m", "advisor", *args], capture_output=True, text=True, env=env,
                              cwd=cwd, timeout=timeout)  # fmt: skip
    return _zygote().run(list(args), env, str(cwd or os.getcwd()), timeout)


class _Zygote:
    def __init__(self) -> None:
        import tempfile
        import threading

        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="inpaint-advisor-cli-"))
        self._proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_zygote.py")], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=cli_env(), cwd=self._dir)  # fmt: skip

    def run(self, argv: list[str], env: dict, cwd: str, timeout: float) -> subprocess.CompletedProcess:
        import json

        with self._lock:
            out, err = self._dir / "stdout", self._dir / "stderr"
            out.write_bytes(b"")
            err.write_bytes(b"")
            request = {"argv": argv, "env": env, "cwd": cwd, "stdout": str(out), "stderr": str(err),
                       "timeout": timeout}  # fmt: skip
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
            if not reply:
                raise RuntimeError("the CLI zygote died (tests/cli_zygote.py)")
            answer = json.loads(reply)
            stdout, stderr = out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8")
        if answer["timed_out"]:
            raise subprocess.TimeoutExpired(["inpaint-advisor", *argv], timeout, stdout, stderr)
        return subprocess.CompletedProcess(["inpaint-advisor", *argv], answer["returncode"], stdout, stderr)

    def close(self) -> None:
        import shutil

        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)


_zygotes: list[_Zygote] = []


def _zygote() -> _Zygote:
    if not _zygotes:
        _zygotes.append(_Zygote())
    return _zygotes[0]


def pytest_sessionfinish(session, exitstatus) -> None:
    for z in _zygotes:
        z.close()


def pytest_configure(config) -> None:
    """One folder of generated checkpoints for the whole session (tests/sd_layouts.py): made here, before the
    xdist workers start, so that they inherit it and each checkpoint is generated once, not once per worker."""
    if hasattr(config, "workerinput") or os.environ.get(sd_layouts.LAYOUTS):
        return
    import tempfile

    config._inpaint_layouts = tempfile.mkdtemp(prefix="inpaint-advisor-layouts-")
    os.environ[sd_layouts.LAYOUTS] = config._inpaint_layouts


def pytest_unconfigure(config) -> None:
    import shutil

    folder = getattr(config, "_inpaint_layouts", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(sd_layouts.LAYOUTS, None)
