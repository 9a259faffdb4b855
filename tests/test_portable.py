"""Portable by construction: with what Windows lacks taken away (fcntl, resource, SIGHUP, pread/pwrite,
fallocate, fdatasync, fadvise, mmap's POSIX flags), every everyday command imports and runs on tiny files."""

import json
import subprocess
import sys

from safetensors.torch import load_file

from tests.conftest import cli_env
from tests.sd_layouts import write_checkpoint

# Runs in a child: the POSIX-only parts removed before anything of the project is imported, then each
# command through the real entry point, its exit status and output collected.
AS_ON_WINDOWS = r"""
import io, json, mmap, os, signal, sys
from contextlib import redirect_stdout
for name in ("fcntl", "resource", "termios"):
    sys.modules[name] = None  # import fcntl -> ImportError, as on Windows
for name in ("SIGHUP", "SIGXFSZ"):
    if hasattr(signal, name):
        delattr(signal, name)
for name in ("preadv", "pread", "pwrite", "posix_fallocate", "fdatasync", "posix_fadvise"):
    if hasattr(os, name):
        delattr(os, name)
for name in ("MAP_PRIVATE", "PROT_READ"):
    if hasattr(mmap, name):
        delattr(mmap, name)

from advisor.cli.fastpath import try_lookup

results = []
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = try_lookup(argv)
        if code is None:
            from advisor.cli.main import run
            code = run(argv)
    results.append({"argv": argv, "code": code, "stdout": buf.getvalue()})
print(json.dumps(results))
print("posix modules imported:", sorted(m for m in ("fcntl", "resource") if sys.modules.get(m) is not None))
"""


def test_every_everyday_command_runs_without_posix_only_modules(tmp_path):
    a, c, b = tmp_path / "sd-v1-5-inpainting.safetensors", tmp_path / "v1-5-pruned.safetensors", tmp_path / "m"
    write_checkpoint(a, "sd1", "inpaint", seed=1)
    write_checkpoint(c, "sd1", seed=2)
    (b / "models" / "Stable-diffusion").mkdir(parents=True)
    fine_tune = b / "models" / "Stable-diffusion" / "myFineTune_v1.safetensors"
    write_checkpoint(fine_tune, "sd1", seed=3)
    commands = [
        ["lookup", "SDXL 1.0", "--offline", "--json"],
        ["probe", str(fine_tune), "--json"],
        ["merge", "-a", str(a), "-b", str(fine_tune), "-c", str(c), "-o", str(tmp_path / "merged.safetensors"),
         "--json"],
        ["build", str(fine_tune), "-a", str(a), "-c", str(c), "--out", str(tmp_path / "built"), "--offline",
         "--json"],
        ["scan", str(b), "--offline", "--json"],
    ]  # fmt: skip
    (tmp_path / "built").mkdir()
    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "registry.db"), INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    child = subprocess.run([sys.executable, "-c", AS_ON_WINDOWS, json.dumps(commands)], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    results_line, imported = child.stdout.strip().splitlines()[-2:]
    assert imported == "posix modules imported: []"
    results = {r["argv"][0]: r for r in json.loads(results_line)}
    for name, r in results.items():
        assert r["code"] == 0, (name, r["stdout"][-2000:], child.stderr[-2000:])
    assert json.loads(results["lookup"]["stdout"])["match"]["family"] == "sdxl"
    assert json.loads(results["probe"]["stdout"])["family"] == "sd1"
    assert (tmp_path / "merged.safetensors").stat().st_size > 0
    built = list((tmp_path / "built").glob("*.safetensors"))
    assert len(built) == 1
    merged, from_build = load_file(tmp_path / "merged.safetensors"), load_file(built[0])
    assert merged.keys() == from_build.keys() and all(merged[k].equal(from_build[k]) for k in merged)
    assert json.loads(results["scan"]["stdout"])
