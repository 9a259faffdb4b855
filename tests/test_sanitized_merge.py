"""The merge's C loop built with AddressSanitizer and UndefinedBehaviorSanitizer, fed crafted and fuzzed
checkpoints (both formats) through `merge`: any read or write outside memory, or undefined behaviour, aborts
the child and fails the test. (A fuzzed .ckpt that merge's reader refuses goes to torch.load, torch's own
code: not run here, where torch's C++ exceptions trip the sanitizer's runtime.) Skipped where no C compiler or
sanitizer runtime is found (the suite's other tests still run the plain build of the loop)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

# In the child: merge._fused is the sanitized build; then seeded mutations of a real layout's safetensors
# header and of a torch zip checkpoint, each merged as B (and the zip as A), every failure one of ours.
CHILD = r"""
import importlib.machinery, importlib.util, random, struct, sys, json, zipfile, io
loader = importlib.machinery.ExtensionFileLoader("merge._fused", sys.argv[1])
spec = importlib.util.spec_from_file_location("merge._fused", sys.argv[1], loader=loader)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); sys.modules["merge._fused"] = mod
from pathlib import Path
from merge import fused
assert fused.kernel() is mod, "the sanitized loop is not the one in use"
from merge.engine import merge
from merge.header import CheckpointError
from merge.plan import MergeError
from merge.zip_pickle import parse
folder = Path(sys.argv[2]); a, b, c, ckpt = (folder / n for n in ("a.safetensors", "b.safetensors",
                                                                 "c.safetensors", "a.ckpt"))
rng = random.Random(int(sys.argv[3]))
raw_b, raw_ckpt = b.read_bytes(), ckpt.read_bytes()
(n,) = struct.unpack("<Q", raw_b[:8]); header = json.loads(raw_b[8:8 + n])
outcomes = {"merged": 0, "refused": 0}

def attempt(x, y, z):
    out = folder / "out.safetensors"
    try:
        merge(x, y, z, out, force=True)
        outcomes["merged"] += 1
    except (CheckpointError, MergeError):
        outcomes["refused"] += 1
    out.unlink(missing_ok=True)

names = [k for k in header if k != "__metadata__"]
for i in range(int(sys.argv[4])):
    h = json.loads(json.dumps(header))
    for _ in range(rng.randint(1, 3)):
        e = h[rng.choice(names)]
        what = rng.choice(["offset", "shape", "dtype"])
        if what == "offset":
            e["data_offsets"][rng.randint(0, 1)] += rng.choice([-(2**28), -2, -1, 1, 2, 64, 2**20, 2**40])
        elif what == "shape":
            e["shape"] = [rng.choice([0, 1, 3, 2**20]) for _ in range(rng.randint(0, 4))]
        else:
            e["dtype"] = rng.choice(["F16", "F32", "BF16", "I64", "U8"])
    body = json.dumps(h).encode()
    (folder / "fb.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + raw_b[8 + n:][: rng.choice(
        [None, len(raw_b) // 2, len(raw_b) - 8 - n - 1])])
    attempt(a, folder / "fb.safetensors", c)
    data = bytearray(raw_ckpt)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    (folder / "fa.ckpt").write_bytes(bytes(data[: rng.choice([None, len(data) - rng.randint(1, 4096)])]))
    if parse(folder / "fa.ckpt") is not None:  # what this reader accepts runs in the C loop; the rest is torch's
        attempt(folder / "fa.ckpt", b, c)
    else:
        outcomes["refused"] += 1
attempt(ckpt, b, c)  # the control: the real files merge
# a reader bug handing the loop a range past its file's mapping: refused by the loop, no access made
from merge.checkpoint import SafetensorsSource
real = SafetensorsSource.segments
def shifted(self, name):
    got = real(self, name)
    if self.path.name == "b.safetensors" and got and name.endswith("out.2.weight"):
        m, start, end = got[0]
        return [(m, start + len(m) - 8, end + len(m) - 8)]
    return got
SafetensorsSource.segments = shifted
attempt(a, b, c)
SafetensorsSource.segments = real
import ctypes
buf = ctypes.create_string_buffer(64); lo = ctypes.addressof(buf)
for call in (lambda: mod.copy_bytes(lo, lo, lo + 64, lo + 32, lo, lo + 64, 33),
             lambda: mod.convert(lo - 4096, lo, lo + 64, 0, lo, lo, lo + 64, 0, 8),
             lambda: mod.add_difference(*[lo, lo, lo + 64, 2] * 4, 17, 1.0)):
    try:
        call()
    except ValueError:
        outcomes["refused"] += 1
print(json.dumps(outcomes))
"""


def _sanitized_loop(tmp: Path) -> Path | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or sys.platform != "linux":
        return None
    out = tmp / f"_fused{sysconfig.get_config_var('EXT_SUFFIX')}"
    built = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                            "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                            f"-I{sysconfig.get_paths()['include']}", str(ROOT / "merge" / "_fused.c"), "-o", str(out)],
                           capture_output=True, text=True)  # fmt: skip
    return out if built.returncode == 0 else None


def test_the_c_loop_under_asan_and_ubsan_with_crafted_and_fuzzed_inputs(tmp_path):
    import torch

    from merge import fused
    from tests.sd_layouts import write_checkpoint

    if fused.kernel() is None:
        pytest.skip("the C loop is not usable on this CPU")
    loop = _sanitized_loop(tmp_path)
    runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if loop is None or not os.path.isabs(runtime):
        pytest.skip("no C compiler with AddressSanitizer here")
    a = write_checkpoint(tmp_path / "a.safetensors", "sd1", "inpaint", 1, scale=16)
    write_checkpoint(tmp_path / "b.safetensors", "sd1", "normal", 2, scale=16)
    write_checkpoint(tmp_path / "c.safetensors", "sd1", "normal", 3, scale=16)
    torch.save({"state_dict": {k: v.float() for k, v in a.items()}}, tmp_path / "a.ckpt")
    env = cli_env(LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", OPENBLAS_NUM_THREADS="1")  # fmt: skip
    child = subprocess.run([sys.executable, "-c", CHILD, str(loop), str(tmp_path), "20261206", "40"],
                           capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert child.returncode == 0, child.stderr[-4000:]
    assert "AddressSanitizer" not in child.stderr and "runtime error" not in child.stderr, child.stderr[-4000:]
    import json

    outcomes = json.loads(child.stdout.strip().splitlines()[-1])
    # the control merged; crafted files and out-of-range calls refused (each of the three direct calls too)
    assert outcomes["merged"] >= 1 and outcomes["refused"] >= 14
