#!/usr/bin/env python3
"""What a user installs, tried as a user would: build the sdist and the wheel (`python -m build`), install the
wheel into a fresh venv outside the checkout and run every command there, from another working directory.

    python3 tasks.py wheel            # what .ci/run calls
    .venv/bin/python .ci/wheel_check.py [--keep DIR] [--no-pipx]

1. `python -m build` makes the sdist, then the wheel from the sdist (so the sdist is proven complete).
2. A fresh venv gets torch (the CPU build on this disk, else the CPU index) and the wheel; no editable finder,
   no PYTHONPATH, cwd a scratch folder: `--version`, every command's `--help` (at 80 columns, nothing wider),
   `lookup` from bundled data, `probe`, `merge` and `scan` on tiny checkpoints made there, `get --manifest` and
   `get --dry-run` into a ComfyUI folder, `status` on a path where no registry is.
3. The same wheel built without a C compiler (the merge's C loop is optional) replaces it: `merge` again, same
   output bits through torch ops.
4. `pipx install <checkout>` into a scratch PIPX_HOME, then `inpaint-advisor --version` from its bin folder.

Exit 0 when all of it holds; otherwise the first failure, with the command and its output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_PIN = os.environ.get("INPAINT_ADVISOR_TORCH", "torch==2.13.0")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# tiny checkpoints with real SD 1.5 key names, written by the checkout's test helpers (not by the wheel)
MAKE_FILES = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.sd_layouts import write_checkpoint
out = sys.argv[2]
Path(out, "models", "Stable-diffusion").mkdir(parents=True)
write_checkpoint(f"{out}/sd-v1-5-inpainting.safetensors", "sd1", "inpaint", seed=1)
write_checkpoint(f"{out}/v1-5-pruned-emaonly.safetensors", "sd1", seed=2)
write_checkpoint(f"{out}/models/Stable-diffusion/myFineTune_v1.safetensors", "sd1", seed=3)
"""

SAME_TENSORS = """
import sys
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys(), "different tensors"
bad = [k for k in a if not (a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and a[k].equal(b[k]))]
assert not bad, f"{len(bad)} tensors differ, e.g. {bad[0]}"
print(f"{len(a)} tensors identical")
"""

LIST_COMMANDS = """
import json
import typer
from advisor.cli.main import app
def walk(cmd, path):
    yield path
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
        for name, sub in cmd.commands.items():
            yield from walk(sub, path + [name])
print(json.dumps(list(walk(typer.main.get_command(app), []))))
"""


class Failed(Exception):
    pass


def run(*cmd, env=None, cwd=None, ok=(0,), quiet=False, timeout=900) -> subprocess.CompletedProcess:
    shown = " ".join("<script>" if "\n" in str(c) else str(c) for c in cmd)
    if not quiet:
        print("+", shown, flush=True)
    r = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode not in ok:
        raise Failed(f"`{shown}` exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}")
    return r


def build(dist: Path, pure: Path, scratch: Path) -> tuple[Path, Path]:
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    sdist = next(dist.glob("inpaint_advisor-*.tar.gz"))
    wheel = next(dist.glob("inpaint_advisor-*.whl"))
    names = _wheel_names(wheel)
    for needed in ("advisor/advice/__init__.py", "advisor/build/__init__.py", "advisor/cli/main.py",
                   "advisor/local/__init__.py", "advisor/team/__init__.py", "crawler/registry/__init__.py",
                   "data/families.json", "data/routes.json", "data/hf_crawl.json"):  # fmt: skip
        if needed not in names:
            raise Failed(f"the wheel lacks {needed}")
    if not any(n.startswith("merge/_fused.") and n.endswith((".so", ".pyd")) for n in names):
        raise Failed("the wheel lacks the compiled merge loop (merge/_fused.*.so)")
    if any(n.startswith(("tests/", "benchmarks/")) for n in names):
        raise Failed("the wheel carries tests/ or benchmarks/")
    # the same sdist built where no C compiler works: the optional extension is left out, the build succeeds
    with tarfile.open(sdist) as t:
        t.extractall(scratch, filter="data")
    src = next(scratch.glob("inpaint_advisor-*"))
    run(sys.executable, "-m", "build", "--wheel", "--outdir", pure, src, env={**os.environ, "CC": "false"})
    pure_wheel = next(pure.glob("inpaint_advisor-*.whl"))
    if any(n.startswith("merge/_fused.") and n.endswith((".so", ".pyd")) for n in _wheel_names(pure_wheel)):
        raise Failed("the wheel built with CC=false still has a compiled loop: the fallback is not tested")
    return wheel, pure_wheel


def _wheel_names(wheel: Path) -> set[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def venv_with(wheel: Path, venv: Path) -> Path:
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    try:
        run(*pip, TORCH_PIN)
    except Failed:
        run(*pip, "torch", "--index-url", TORCH_CPU_INDEX)
    run(*pip, wheel)
    return py


def smoke(py: Path, work: Path) -> Path:
    """Every command from the installed wheel, in ``work``; returns the merge's output."""
    exe = py.parent / "inpaint-advisor"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COLUMNS="80", INPAINT_ADVISOR_DB=str(work / "registry.db"), INPAINT_ADVISOR_CACHE=str(work / "cache"),
               INPAINT_ADVISOR_CIVITAI_URL="http://127.0.0.1:9", HF_ENDPOINT="http://127.0.0.1:9",
               HF_HUB_OFFLINE="1", NO_COLOR="1")  # fmt: skip
    where = run(py, "-c", "import advisor, crawler, data, merge; print(advisor.__file__)", env=env, cwd=work)
    if str(ROOT) in where.stdout or "site-packages" not in where.stdout:
        raise Failed(f"advisor imported from {where.stdout.strip()}, not from the venv's site-packages")
    version = run(exe, "--version", env=env, cwd=work).stdout
    if not version.startswith("inpaint-advisor ") or "not installed" in version:
        raise Failed(f"--version printed {version!r}")
    paths = json.loads(run(py, "-c", LIST_COMMANDS, env=env, cwd=work).stdout)
    for path in paths:
        out = run(exe, *path, "--help", env=env, cwd=work, quiet=True).stdout
        wide = [line for line in out.splitlines() if len(line) > 80]
        if wide:
            raise Failed(f"`inpaint-advisor {' '.join(path)} --help` is wider than 80 columns:\n" + "\n".join(wide))
    print(f"  --help of {len(paths)} commands: exit 0, at most 80 columns", flush=True)
    answer = json.loads(run(exe, "lookup", "SDXL 1.0", "--offline", "--json", env=env, cwd=work).stdout)
    if answer["match"]["family"] != "sdxl" or not answer["recommendation"]:
        raise Failed(f"lookup from bundled data answered {answer}")
    run(sys.executable, "-c", MAKE_FILES, ROOT, work, cwd=work)  # the checkout's helpers, not the wheel
    probe = json.loads(run(exe, "probe", "models/Stable-diffusion/myFineTune_v1.safetensors", "--json",
                           env=env, cwd=work).stdout)  # fmt: skip
    if probe.get("family") != "sd1":
        raise Failed(f"probe answered {probe}")
    out = work / "myFineTune_v1-inpainting.safetensors"
    run(exe, "merge", "-a", "sd-v1-5-inpainting.safetensors", "-b", "models/Stable-diffusion/myFineTune_v1.safetensors",
        "-c", "v1-5-pruned-emaonly.safetensors", "-o", out.name, "--json", env=env, cwd=work)  # fmt: skip
    if not out.is_file():
        raise Failed("merge exited 0 without its output")
    scan = json.loads(run(exe, "scan", ".", "--offline", "--json", env=env, cwd=work, ok=(0, 1)).stdout)
    if not scan:
        raise Failed("scan printed nothing")
    (work / "ComfyUI" / "comfy").mkdir(parents=True)  # get: the UI folders, routes and node tables the wheel ships
    manifest = json.loads(run(exe, "get", "SDXL 1.0", "--root", "ComfyUI", "--offline", "--manifest",
                              env=env, cwd=work).stdout)  # fmt: skip
    if not any(f["destination"].endswith("models/inpaint/inpaint_v26.fooocus.patch") for f in manifest["files"]):
        raise Failed(f"get --manifest answered {manifest}")
    planned = json.loads(run(exe, "get", "SDXL 1.0", "--root", "ComfyUI", "--offline", "--dry-run", "--json",
                             env=env, cwd=work).stdout)  # fmt: skip
    if not planned.get("workflow") or (work / "ComfyUI" / "models").exists():
        raise Failed(f"get --dry-run answered {planned} (or touched the folder)")
    empty = run(exe, "status", "--db", work / "nowhere" / "registry.db", "--json", env=env, cwd=work, ok=(1, 2))
    if "error" not in json.loads(empty.stdout):
        raise Failed(f"status on an empty path printed {empty.stdout!r}")
    if (work / "nowhere").exists():
        raise Failed("status created a registry")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--no-pipx", action="store_true", help="skip the pipx install")
    args = ap.parse_args()
    top = args.keep or Path(tempfile.mkdtemp(prefix="inpaint-advisor-wheel-"))
    top.mkdir(parents=True, exist_ok=True)
    if top.resolve().is_relative_to(ROOT):
        print("the check must run outside the checkout", file=sys.stderr)
        return 2
    try:
        wheel, pure_wheel = build(top / "dist", top / "dist-pure", top / "sdist")
        py = venv_with(wheel, top / "venv")
        work = top / "work"
        work.mkdir()
        with_c = smoke(py, work)
        if run(py, "-c", "import merge._fused", cwd=work, ok=(0, 1)).returncode != 0:
            raise Failed("the installed wheel's merge loop does not import")
        kept = top / "with-c-loop.safetensors"
        shutil.move(with_c, kept)
        run(py, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", pure_wheel)
        if run(py, "-c", "import merge._fused", cwd=work, ok=(0, 1)).returncode == 0:
            raise Failed("the pure wheel still imports merge._fused")
        shutil.rmtree(work)
        work.mkdir()
        pure = smoke(py, work)
        print("  C loop vs torch ops:", run(py, "-c", SAME_TENSORS, kept, pure, cwd=work).stdout.strip())
        if not args.no_pipx:
            pipx_check(top, py)
    except Failed as exc:
        print(f"wheel check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    print("wheel check passed: sdist and wheel build, every command runs from a clean venv, the pure fallback too")
    return 0


def pipx_check(top: Path, py: Path) -> None:
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "pipx")
    constraints = top / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")  # the CPU build on this disk, not a multi-GB CUDA download
    env = {**os.environ, "PIPX_HOME": str(top / "pipx"), "PIPX_BIN_DIR": str(top / "pipx-bin"),
           "PIPX_MAN_DIR": str(top / "pipx-man"), "PIP_CONSTRAINT": str(constraints)}  # fmt: skip
    run(py.parent / "pipx", "install", ROOT, env=env, cwd=top)
    version = run(top / "pipx-bin" / "inpaint-advisor", "--version", env=env, cwd=top).stdout
    if not version.startswith("inpaint-advisor "):
        raise Failed(f"pipx's inpaint-advisor --version printed {version!r}")
    print("  pipx install: ok,", version.strip(), flush=True)


if __name__ == "__main__":
    sys.exit(main())
