#!/usr/bin/env python3
"""Set up a local virtualenv and run things in it. Needs only Python >= 3.11.

    python3 tasks.py run lookup "majicmix realistic"   # any inpaint-advisor command
    python3 tasks.py test                                # lint + the whole test suite (what CI runs)
    python3 tasks.py lint                                # ruff, mypy, and the generated docs checked (cog)
    python3 tasks.py docs                                # regenerate docs/ and README.md parts from the code
    python3 tasks.py wheel                               # build sdist + wheel, run every command from a venv
    python3 tasks.py bench [crawl|merge|lookup|match|scan|distance|proofs|get|build|queue] [options]  # benchmarks/
    python3 tasks.py where                               # how to run inpaint-advisor directly

Torch is installed first as a CPU build (a bare ``torch`` requirement would pull a multi-GB CUDA build): the
exact release cached on the machine if there is one, else the CPU wheel index.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("INPAINT_ADVISOR_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
TORCH_PIN = os.environ.get("INPAINT_ADVISOR_TORCH", "torch==2.13.0")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def sh(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=check, **kw)


def setup() -> None:
    stamp = VENV / ".inpaint-advisor-setup"
    # reinstall when what the install builds changes: the project's requirements or the merge's C loop
    built_from = [ROOT / "pyproject.toml", ROOT / "merge" / "_fused.c"]
    want = hashlib.sha256(b"".join(p.read_bytes() for p in built_from) + TORCH_PIN.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        sh(sys.executable, "-m", "venv", VENV)
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    has_torch = sh(PY, "-c", "import torch", check=False, capture_output=True).returncode == 0
    if not has_torch and sh(*pip, TORCH_PIN, check=False).returncode != 0:
        sh(*pip, "torch", "--index-url", TORCH_CPU_INDEX)
    sh(*pip, "-e", f"{ROOT}[dev]")
    stamp.write_text(want)
    print(where(), flush=True)


def doc_files() -> list[str]:
    """The Markdown files with cog sections: the reference generated from the code."""
    return [str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
            if "[[[cog" in p.read_text(encoding="utf-8")]


def lint(say=print) -> int:
    """ruff, mypy, and cog --check: the generated docs must match the code they are generated from. ``say``
    gets each command and its output (``test`` keeps them for after the suite, which runs meanwhile)."""

    def run(*cmd) -> int:
        say("+ " + " ".join(map(str, cmd)))
        done = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True)
        if done.stdout.strip() or done.stderr.strip():
            say((done.stdout + done.stderr).rstrip())
        return done.returncode

    failed = run(PY, "-m", "ruff", "check", ROOT)
    failed |= run(PY, "-m", "mypy")
    docs = doc_files()
    if docs:
        checked = run(PY, "-m", "cogapp", "--check", "--diff", *docs)
        if checked:
            say("docs are out of date: run `python3 tasks.py docs` and commit the result")
        failed |= checked
    return failed


def test(args: list[str]) -> int:
    """lint and the suite side by side (lint is one process on one core; the suite leaves about a third of two
    cores idle while its tests wait on servers and children), lint's report printed after the suite's."""
    import threading

    said: list[str] = []
    result: list[int] = []
    linter = threading.Thread(target=lambda: result.append(lint(said.append)))
    linter.start()
    # pytest-xdist, one worker per core (three on two cores: 5 min 32 s against 5 min 43 s, within the noise,
    # and lint needs a core too), stealing work from each other so that no worker idles while the other ends
    # the slow team and merge tests (5 min 18 s against 5 min 50 s); the ten slowest listed at the end
    tests = sh(PY, "-m", "pytest", "-n", os.environ.get("INPAINT_ADVISOR_TEST_WORKERS", "auto"), "--dist", "worksteal",
               "--durations=10", *args, check=False, cwd=ROOT).returncode
    linter.join()
    print("\n".join(said), flush=True)
    print(f"lint: {'failed' if result[0] else 'passed'}; tests: {'failed' if tests else 'passed'}", flush=True)
    return tests or result[0]


def where() -> str:
    exe = BIN / "inpaint-advisor"
    shown = os.path.relpath(exe) if not os.path.relpath(exe).startswith("..") else str(exe)
    activate = os.path.relpath(BIN / "activate") if not os.path.relpath(BIN).startswith("..") else BIN / "activate"
    return (f"inpaint-advisor is installed in {VENV}, not on your PATH: run it as {shown} ..., or "
            f"`source {activate}` first, or `python3 tasks.py run ...`")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    task, rest = argv[0], argv[1:]
    if task == "where":
        print(where())
        return 0
    setup()
    if task == "setup":
        return 0
    if task == "run":
        return sh(BIN / "inpaint-advisor", *rest, check=False).returncode
    if task == "lint":
        return lint()
    if task == "docs":  # regenerate what docs/ and README.md generate from the code
        return sh(PY, "-m", "cogapp", "-r", *doc_files(), check=False, cwd=ROOT).returncode
    if task == "test":
        return test(rest)
    if task == "wheel":  # build the sdist and wheel, install into a clean venv, run every command (.ci/run does)
        return sh(PY, ROOT / ".ci" / "wheel_check.py", *rest, check=False, cwd=ROOT).returncode
    if task == "bench":
        known = ["crawl", "merge", "lookup", "match", "scan", "distance", "proofs", "get", "build", "queue"]
        names = [n for n in rest if n in known]
        args = rest[len(names) :]  # the rest goes to the scripts: bench merge --cold --families sd1
        if rest[: len(names)] != names:
            print("usage: tasks.py bench [crawl|merge|lookup|match|scan|distance|proofs|get|build|queue ...] "
                  "[script options]", file=sys.stderr)
            return 2
        return max(
            sh(PY, ROOT / "benchmarks" / f"bench_{n}.py", *args, check=False, cwd=ROOT).returncode
            for n in names or known[:8]  # build needs ~45 GB of disk, queue a PostgreSQL server: only when named
        )
    print(f"unknown task {task!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
