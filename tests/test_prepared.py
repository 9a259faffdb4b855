"""merge.prepared and `cache list|clear`: a family's A and C folded once into A - M*C; builds from it equal the
three-input merge within one ulp of the output dtype, read neither A nor C, and name them in the recipe."""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from merge import prepared
from merge.engine import MergeError, merge, run_merge
from tests.conftest import cli_env, run_cli
from tests.sd_layouts import write_checkpoint


def _ordered(bits: torch.Tensor) -> torch.Tensor:
    """16-bit float patterns as integers in the order of their values, so that a difference counts ulps."""
    i = bits.int()
    return torch.where(i < 0, -(i & 0x7FFF), i)


def _max_ulps(x: torch.Tensor, y: torch.Tensor) -> int:
    if not x.is_floating_point() or x.numel() == 0:
        return 0 if torch.equal(x, y) else 10**9
    if x.dtype == torch.float32:
        return int((x.view(torch.int32).long() - y.view(torch.int32).long()).abs().max())
    return int((_ordered(x.view(torch.int16)) - _ordered(y.view(torch.int16))).abs().max())


@pytest.fixture
def official(tmp_path, monkeypatch):
    """A as an fp32 zip .ckpt with a nested state_dict, C fp32 safetensors, B fp16: the published formats."""
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    a = write_checkpoint(tmp_path / "a16.safetensors", "sd1", "inpaint", 1, extra={"only.in.a": torch.ones(3)})
    c = write_checkpoint(tmp_path / "c16.safetensors", "sd1", "normal", 3)
    write_checkpoint(tmp_path / "b.safetensors", "sd1", "normal", 2)
    g = torch.Generator().manual_seed(11)

    def noisy(sd):  # fp32 values with bits beyond fp16's
        return {k: v.float() + torch.randn(v.shape, generator=g) * 1e-3 if v.is_floating_point() else v
                for k, v in sd.items()}  # fmt: skip

    torch.save({"state_dict": noisy(a), "global_step": 1}, tmp_path / "a.ckpt")
    save_file(noisy(c), tmp_path / "c.safetensors")
    return tmp_path


def _within_rounding(three, two, a, b, c) -> bool:
    """|two - three| within one ulp of the output dtype at the result, plus the fp32 rounding both merges make
    (relative to the operands: where A - C + B cancels to far below them, that is more than one output ulp)."""
    x, y = three.double(), two.double()
    ulp = torch.finfo(three.dtype).eps * x.abs().clamp_min(torch.finfo(three.dtype).tiny)
    fp32 = 4 * 2.0**-24 * (a.double().abs() + b.double().abs() + c.double().abs())
    return bool(((x - y).abs() <= ulp + fp32).all())


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_a_build_from_the_pair_equals_the_three_input_merge_within_one_ulp(official, dtype):
    t = official
    a, b, c = torch.load(t / "a.ckpt", weights_only=True)["state_dict"], load_file(t / "b.safetensors"), \
        load_file(t / "c.safetensors")
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    assert pair.delta.exists() and "only.in.a" not in pair.deltas and pair.family == "sd1"
    merge(t / "a.ckpt", t / "b.safetensors", t / "c.safetensors", t / "three.safetensors", dtype=dtype)
    # A and C are not read again: gone from disk, the build still runs
    (t / "a.ckpt").unlink()
    (t / "c.safetensors").unlink()
    plan = prepared.plan_build(prepared.find("A" * 64, "C" * 64, 1.0), t / "b.safetensors", t / "two.safetensors",
                               dtype=dtype)  # fmt: skip
    try:
        result = run_merge(plan, hash_inputs=True)
    finally:
        plan.close()
    three, two = load_file(t / "three.safetensors"), load_file(t / "two.safetensors")
    assert set(three) == set(two)
    if dtype == "fp16":  # measured: never more than one ulp apart (fp16's subnormals absorb the fp32 rounding)
        assert max(_max_ulps(three[k], two[k]) for k in three) <= 1
    added = [k for k in three if k in b and k in c and three[k].shape == b[k].shape and three[k].is_floating_point()]
    assert len(added) > 900 and all(_within_rounding(three[k], two[k], a[k], b[k], c[k]) for k in added)
    assert torch.equal(three["only.in.a"], two["only.in.a"])  # copied from A, exactly
    conv = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.equal(three[conv][:, 4:], two[conv][:, 4:])  # A's extra channels, exactly
    assert result.input_sha256["A"] == "A" * 64 and result.input_sha256["C"] == "C" * 64
    with safe_open(str(t / "two.safetensors"), "pt") as f:
        recipe = json.loads(f.metadata()["inpaint_advisor.recipe"])
    assert recipe["inputs"]["A"] == {"file": "a.ckpt", "sha256": "A" * 64, "family": "sd1", "variant": "inpaint"}
    assert recipe["inputs"]["C"]["file"] == "c.safetensors" and recipe["inputs"]["C"]["sha256"] == "C" * 64


def _first_build(t, out, **kw):
    plan = prepared.plan_first_build(t / "a.ckpt", t / "c.safetensors", t / "b.safetensors", out, "A" * 64, "C" * 64,
                                     **kw)  # fmt: skip
    assert plan is not None
    return plan


def _data(path) -> bytes:
    """A safetensors file's tensor bytes (its header holds dates)."""
    raw = path.read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little"):]


@pytest.mark.parametrize("kernel", [True, False], ids=["c-loop", "torch"])
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_a_first_build_writes_the_pair_in_its_own_pass_bit_for_bit(official, monkeypatch, kernel, dtype):
    """The same delta as ``prepare`` writes, and the same output as a build from that pair, from one merge."""
    from merge import fused

    t = official
    if not kernel:
        monkeypatch.setattr(fused, "kernel", lambda: None)
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    plan = prepared.plan_build(pair, t / "b.safetensors", t / "two.safetensors", dtype=dtype)
    try:
        run_merge(plan)
    finally:
        plan.close()
    delta, deltas = _data(pair.delta), pair.deltas
    shutil.rmtree(prepared.root())

    plan = _first_build(t, t / "one.safetensors", dtype=dtype)
    try:
        result = run_merge(plan)
    finally:
        plan.close()
    again = prepared.find("A" * 64, "C" * 64, 1.0)
    assert again is not None and again.deltas == deltas and prepared.check(again) is None
    assert again.sha256 == hashlib.sha256(again.delta.read_bytes()).hexdigest().upper()
    assert _data(again.delta) == delta and _data(t / "one.safetensors") == _data(t / "two.safetensors")
    assert result.input_sha256["A"] == "A" * 64 and result.warnings == plan.warnings
    assert not [p for p in t.rglob("*") if ".partial-" in p.name]


def test_a_first_build_whose_b_fails_its_check_keeps_the_pair_it_wrote(official):
    t = official
    plan = _first_build(t, t / "one.safetensors")
    plan.expected = {"b": "0" * 64}  # B is not the file it was checked to be
    try:
        with pytest.raises(MergeError, match="changed since it was checked") as failed:
            run_merge(plan)
    finally:
        plan.close()
    assert "one.safetensors was not written (the prepared pair of A and C was, and is kept)" in str(failed.value)
    assert not (t / "one.safetensors").exists()
    pair = prepared.find("A" * 64, "C" * 64, 1.0)
    assert pair is not None and prepared.check(pair) is None  # A's and C's alone: whole, and used next time


def test_a_first_build_that_fails_midway_leaves_neither_pair_nor_partial_files(official, monkeypatch):
    from merge.safetensors_io import SafetensorsWriter

    t = official
    real, seen = SafetensorsWriter.done, [0]

    def done(self, name):
        seen[0] += 1
        if seen[0] == 40:
            raise OSError(5, "Input/output error")
        real(self, name)

    monkeypatch.setattr(SafetensorsWriter, "done", done)
    plan = _first_build(t, t / "one.safetensors")
    try:
        with pytest.raises(OSError):
            run_merge(plan)
    finally:
        plan.close()
    assert prepared.find("A" * 64, "C" * 64, 1.0) is None and not (t / "one.safetensors").exists()
    assert not [p for p in t.rglob("*") if ".partial-" in p.name]
    monkeypatch.setattr(SafetensorsWriter, "done", real)
    plan = _first_build(t, t / "one.safetensors")  # the next one starts afresh
    try:
        run_merge(plan)
    finally:
        plan.close()
    assert prepared.find("A" * 64, "C" * 64, 1.0) is not None


def test_a_build_of_the_family_meanwhile_waits_then_builds_from_the_pair(official):
    t = official
    plan = _first_build(t, t / "one.safetensors")
    got = []
    waiter = threading.Thread(target=lambda: got.append(prepared.plan_first_build(
        t / "a.ckpt", t / "c.safetensors", t / "b.safetensors", t / "two.safetensors", "A" * 64, "C" * 64)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # the pair's lock is the first build's until its plan is closed
    try:
        run_merge(plan)
    finally:
        plan.close()
    waiter.join(10)
    assert got == [None] and prepared.find("A" * 64, "C" * 64, 1.0) is not None


def test_a_first_build_of_a_model_the_pair_cannot_serve_is_refused_before_any_work(official):
    t = official
    b = load_file(t / "b.safetensors")
    save_file({k: v for k, v in b.items() if not k.endswith("out.2.weight")}, t / "pruned.safetensors")
    with pytest.raises(prepared.Unusable, match="B has no"):
        prepared.plan_first_build(t / "a.ckpt", t / "c.safetensors", t / "pruned.safetensors", t / "o.safetensors",
                                  "A" * 64, "C" * 64)  # fmt: skip
    assert prepared.find("A" * 64, "C" * 64, 1.0) is None and not (t / "o.safetensors").exists()
    assert prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)  # the lock was let go


def test_a_model_without_some_of_the_bases_tensors_cannot_use_the_pair(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    b = load_file(t / "b.safetensors")
    dropped = next(iter(pair.deltas))
    save_file({k: v for k, v in b.items() if k != dropped}, t / "pruned.safetensors")
    with pytest.raises(MergeError, match=f"B has no {dropped}"):
        prepared.plan_build(pair, t / "pruned.safetensors", t / "o.safetensors")
    assert not (t / "o.safetensors").exists()


def test_a_preparation_that_did_not_finish_is_not_used_and_is_made_again(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    (pair.folder / prepared.PAIR_FILE).unlink()  # killed between the delta's rename and its record
    assert prepared.find("A" * 64, "C" * 64, 1.0) is None and prepared.leftovers() == [pair.folder]
    again = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    assert again.delta.stat().st_size == again.size and prepared.leftovers() == []
    with open(again.delta, "r+b") as f:  # a delta that is not the size its record says: not trusted
        f.truncate(again.size - 1)
    assert prepared.find("A" * 64, "C" * 64, 1.0) is None


def test_two_builds_at_once_prepare_the_pair_once(official, monkeypatch):
    t = official
    runs = []
    real = prepared.plan_merge
    monkeypatch.setattr(prepared, "plan_merge", lambda *a, **k: runs.append(1) or real(*a, **k))
    got = []
    threads = [threading.Thread(target=lambda: got.append(prepared.prepare(t / "a.ckpt", t / "c.safetensors",
                                                                           "A" * 64, "C" * 64)))
               for _ in range(2)]  # fmt: skip
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(runs) == 1 and len(got) == 2 and got[0].key == got[1].key


def test_the_multiplier_is_part_of_the_pair(official):
    t = official
    one = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64, multiplier=1.0)
    half = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64, multiplier=0.5)
    assert one.key != half.key
    merge(t / "a.ckpt", t / "b.safetensors", t / "c.safetensors", t / "three.safetensors", multiplier=0.5)
    plan = prepared.plan_build(half, t / "b.safetensors", t / "two.safetensors")
    try:
        run_merge(plan)
    finally:
        plan.close()
    three, two = load_file(t / "three.safetensors"), load_file(t / "two.safetensors")
    assert max(_max_ulps(three[k], two[k]) for k in three) <= 1


def test_cache_list_and_clear(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    files = t / "cache" / "files" / "hf"
    files.mkdir(parents=True)
    (files / "v1-5.safetensors").write_bytes(b"x" * 100)
    env = cli_env(INPAINT_ADVISOR_CACHE=str(t / "cache"))
    listed = json.loads(run_cli("cache", "list", "--json", env=env).stdout)
    assert [p["key"] for p in listed["prepared"]] == [pair.key]
    assert listed["prepared"][0]["size"] == pair.size and listed["files"][0]["size"] == 100
    assert listed["total_bytes"] == pair.size + 100
    shown = run_cli("cache", "list", env=env)
    assert shown.returncode == 0 and "a.ckpt" in shown.stdout and "v1-5.safetensors" in shown.stdout
    dry = json.loads(run_cli("cache", "clear", "--dry-run", "--json", env=env).stdout)
    assert dry["freed"] >= pair.size + 100 and pair.delta.exists()
    # a pair a running build holds is kept, and said so
    with open(pair.folder.with_name(pair.folder.name + ".lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = run_cli("cache", "clear", "prepared", env=env)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert busy.returncode == 1 and "in use" in busy.stdout and pair.delta.exists()
    cleared = json.loads(run_cli("cache", "clear", "prepared", "--json", env=env).stdout)
    assert cleared["removed"] == [str(pair.folder)] and not pair.folder.exists()
    assert (files / "v1-5.safetensors").exists()  # only what was asked
    assert run_cli("cache", "clear", "files", env=env).returncode == 0 and not files.exists()


# -- integrity: checked before use, held while used, partial files of dead owners cleaned ---------------------
def _zombie_state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0]


@contextlib.contextmanager
def _zombie():
    """The pid of a real zombie: a child that exited and that this process does not reap until the block ends."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while _zombie_state(pid) != b"Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        os.kill(pid, 0)  # a zombie still answers a signal test: why liveness reads its state instead
        yield pid
    finally:
        os.waitpid(pid, 0)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc to make a zombie")


def _is_hex(sha256: str) -> bool:
    return len(sha256) == 64 and int(sha256, 16) >= 0


def _tamper(delta, at_end: bool = False) -> None:
    """Same size, other bytes: 64 bytes of tensor data set to 0xFF (NaN as fp32)."""
    with open(delta, "r+b") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(-128 if at_end else 8 + header + 64, os.SEEK_END if at_end else os.SEEK_SET)
        f.write(b"\xff" * 64)


def test_a_same_size_tamper_is_caught_and_the_build_prepares_the_pair_again(official):
    from advisor.build import build

    t = official
    write_checkpoint(t / "b2.safetensors", "sd1", "normal", 5)
    first = build(str(t / "b.safetensors"), inpaint=str(t / "a.ckpt"), base=str(t / "c.safetensors"),
                  out=t / "out", db=str(t / "r.db"), offline=True, prepare_pair=True)  # fmt: skip
    assert first.pair is not None and first.pair.prepared_now
    pair = prepared.find(first.inputs["A"].sha256, first.inputs["C"].sha256, 1.0)
    assert pair is not None and pair.sha256 == hashlib.sha256(pair.delta.read_bytes()).hexdigest().upper()
    size = pair.delta.stat().st_size
    _tamper(pair.delta)
    assert pair.delta.stat().st_size == size and prepared.find(pair.a["sha256"], pair.c["sha256"], 1.0) is not None
    second = build(str(t / "b2.safetensors"), inpaint=str(t / "a.ckpt"), base=str(t / "c.safetensors"),
                   out=t / "out", db=str(t / "r.db"), offline=True, prepare_pair=True)  # fmt: skip
    assert second.action == "built" and second.verified
    assert second.pair is not None and second.pair.prepared_now and second.pair.key == pair.key
    assert any("failed its check" in w and "prepared again from A and C" in w for w in second.warnings), second.warnings
    again = prepared.find(pair.a["sha256"], pair.c["sha256"], 1.0)
    assert again is not None and again.sha256 == hashlib.sha256(again.delta.read_bytes()).hexdigest().upper()
    merge(t / "a.ckpt", t / "b2.safetensors", t / "c.safetensors", t / "three.safetensors")
    three, two = load_file(t / "three.safetensors"), load_file(second.output.path)
    assert set(three) == set(two) and max(_max_ulps(three[k], two[k]) for k in three) <= 1
    assert all(bool(torch.isfinite(v).all()) for v in two.values() if v.is_floating_point())


def test_without_the_flag_a_failed_pair_is_merged_around_and_not_made_again(official):
    from advisor.build import build

    t = official
    write_checkpoint(t / "b2.safetensors", "sd1", "normal", 5)
    kw = dict(inpaint=str(t / "a.ckpt"), base=str(t / "c.safetensors"), out=t / "out", db=str(t / "r.db"),
              offline=True)  # fmt: skip
    first = build(str(t / "b.safetensors"), prepare_pair=True, **kw)
    _tamper(prepared.find(first.inputs["A"].sha256, first.inputs["C"].sha256, 1.0).delta)
    second = build(str(t / "b2.safetensors"), **kw)
    assert second.action == "built" and second.verified and second.pair is None
    assert any("failed its check" in w and "merged from A, B and C" in w for w in second.warnings), second.warnings
    assert prepared.find(first.inputs["A"].sha256, first.inputs["C"].sha256, 1.0) is None  # removed, not made
    assert {i.role: i.state for i in second.plan}["A"] == "local"  # what it read, not the pair it planned to
    merge(t / "a.ckpt", t / "b2.safetensors", t / "c.safetensors", t / "three.safetensors")
    three, built = load_file(t / "three.safetensors"), load_file(second.output.path)
    assert set(three) == set(built) and all(torch.equal(three[k], built[k]) for k in three)


def test_asking_for_the_pair_shows_it_in_the_plan_or_says_why_none_is_made(official):
    from advisor.build import build

    t = official
    kw = dict(inpaint=str(t / "a.ckpt"), base=str(t / "c.safetensors"), out=t / "out", db=str(t / "r.db"),
              offline=True)  # fmt: skip
    plain = build(str(t / "b.safetensors"), dry_run=True, **kw)
    planned = build(str(t / "b.safetensors"), dry_run=True, prepare_pair=True, **kw)
    (pair,) = [i for i in planned.plan if i.role == "pair"]
    assert pair.state == "to prepare" and pair.size == 2 * (t / "b.safetensors").stat().st_size
    assert planned.disk_needed == plain.disk_needed + pair.size and not [i for i in plain.plan if i.role == "pair"]
    assert plain.disk_needed == (t / "b.safetensors").stat().st_size  # the output, about B's size
    assert not (t / "cache" / "prepared").exists()  # a plan writes nothing
    build(str(t / "b.safetensors"), **kw)
    again = build(str(t / "b.safetensors"), prepare_pair=True, **kw)  # done before: nothing is merged
    assert again.action == "already-built" and again.pair is None
    assert "no prepared pair is made: this build merges nothing" in again.warnings


def test_a_tamper_that_sets_the_mtime_back_is_caught_too(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    st = pair.delta.stat()
    _tamper(pair.delta, at_end=True)
    os.utime(pair.delta, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime as it was; ctime cannot be set back
    with pytest.raises(prepared.Gone, match="failed its check") as gone:
        prepared.plan_build(pair, t / "b.safetensors", t / "o.safetensors")
    assert isinstance(gone.value, prepared.Unusable)  # a caller that only knows Unusable still never merges it
    assert not pair.folder.exists() and not (t / "o.safetensors").exists()
    assert prepared.find("A" * 64, "C" * 64, 1.0) is None  # prepared again by the next build


def test_a_touched_but_unchanged_delta_is_hashed_once_and_used(official, monkeypatch):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    hashed = []
    real = prepared._sha256
    monkeypatch.setattr(prepared, "_sha256", lambda path: hashed.append(path) or real(path))

    def use() -> None:
        plan = prepared.plan_build(prepared.find("A" * 64, "C" * 64, 1.0), t / "b.safetensors", t / "o.safetensors")
        try:
            run_merge(plan, hash_inputs=False)
        finally:
            plan.close()
        (t / "o.safetensors").unlink()

    use()
    assert hashed == []  # stamped when it was prepared: the stat matches, nothing to hash
    st = pair.delta.stat()
    os.utime(pair.delta, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    use()
    use()
    assert hashed == [pair.delta]  # once, then stamped again
    assert prepared.find("A" * 64, "C" * 64, 1.0) is not None and pair.delta.exists()


def test_a_pair_of_the_old_format_is_prepared_again(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    record = json.loads((pair.folder / prepared.PAIR_FILE).read_text())
    assert record["format"] == prepared.FORMAT == 3 and record["sha256"] == pair.sha256
    old = record | {"format": 2}  # before the delta kept the record's facts in its own metadata
    (pair.folder / prepared.PAIR_FILE).write_text(json.dumps(old))
    assert prepared.find("A" * 64, "C" * 64, 1.0) is None and prepared.leftovers() == [pair.folder]
    again = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    assert json.loads((again.folder / prepared.PAIR_FILE).read_text())["format"] == 3
    assert _is_hex(again.sha256) and prepared.leftovers() == []


@pytest.mark.parametrize("edit", ["multiplier", "deltas", "family", "c_dtype", "a_file", "missing_in_c"])
def test_a_record_edited_to_say_other_than_its_delta_is_never_built_from(official, edit):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    record = json.loads((pair.folder / prepared.PAIR_FILE).read_text())
    if edit == "multiplier":  # the key then names another M: not this folder's pair at all
        record["multiplier"] = 2.0
    elif edit == "deltas":  # one delta fewer: that tensor would be taken from B as it is
        record["deltas"].pop(sorted(record["deltas"])[-1])
    elif edit == "a_file":  # the name every output's recipe gives A
        record["a"]["file"] = "someone-elses.safetensors"
    elif edit == "missing_in_c":
        record["missing_in_c"] = ["model.diffusion_model.out.2.weight"]
    else:
        record[edit] = "sdxl" if edit == "family" else "F16"
    (pair.folder / prepared.PAIR_FILE).write_text(json.dumps(record))
    found = prepared.find("A" * 64, "C" * 64, 1.0)
    if found is None:
        assert edit == "multiplier" and prepared.leftovers() == [pair.folder]
        return
    with pytest.raises(prepared.Gone, match="does not say what its delta.safetensors was prepared as"):
        prepared.plan_build(found, t / "b.safetensors", t / "o.safetensors")
    assert not pair.folder.exists() and not (t / "o.safetensors").exists()


def test_a_pair_copied_under_another_key_is_not_that_keys_pair(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    shutil.copytree(pair.folder, prepared.root() / prepared.key_of("A" * 64, "C" * 64, 0.5))
    assert prepared.find("A" * 64, "C" * 64, 0.5) is None and prepared.find("A" * 64, "C" * 64, 1.0) is not None


def test_things_in_the_place_of_a_pairs_files_are_cleared_not_failed_on(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    prepared.users_dir(pair.key).write_text("")  # a file where the users' folder goes
    with prepared.using(pair) as held:
        assert held.key == pair.key and prepared.users_dir(pair.key).is_dir()
    shutil.rmtree(pair.folder)
    (pair.folder / prepared.PAIR_FILE).mkdir(parents=True)  # folders where the record, stamp and delta go
    (pair.folder / prepared.STAMP_FILE).mkdir()
    (pair.folder / prepared.DELTA_FILE).mkdir()
    again = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    assert (again.folder / prepared.PAIR_FILE).is_file() and prepared.check(again) is None


def test_a_pair_removed_after_it_was_found_is_gone_not_a_failed_merge(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    shutil.rmtree(pair.folder)
    with pytest.raises(prepared.Gone, match="removed meanwhile"):
        prepared.plan_build(pair, t / "b.safetensors", t / "o.safetensors")


def test_cache_clear_keeps_a_pair_a_build_holds_and_says_busy(official):
    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    env = cli_env(INPAINT_ADVISOR_CACHE=str(t / "cache"))
    users = prepared.users_dir(pair.key)
    users.mkdir(parents=True, exist_ok=True)
    stale = users / "999999-0badc0ffee.lock"  # a build that died: nobody holds its lock
    stale.write_text("")
    with prepared.using(pair) as held:
        assert held.key == pair.key
        assert [p.parent for p in users.iterdir()] == [users] and not stale.exists()  # swept on taking it
        stale.write_text("")
        busy = run_cli("cache", "clear", "--json", env=env)
        listed = json.loads(run_cli("cache", "list", "--json", env=env).stdout)
    assert busy.returncode == 1, busy.stderr
    done = json.loads(busy.stdout)
    assert str(pair.folder) in done["busy"] and pair.delta.exists() and str(pair.folder) not in done["removed"]
    assert str(stale) in done["removed"] and not stale.exists()
    assert [p["key"] for p in listed["prepared"]] == [pair.key]
    assert not users.exists() or list(users.iterdir()) == []  # the hold's own file went with it
    # a plan from the pair holds it too, until the plan is closed
    plan = prepared.plan_build(pair, t / "b.safetensors", t / "o.safetensors")
    try:
        held_now = run_cli("cache", "clear", "prepared", "--json", env=env)
    finally:
        plan.close()
    assert held_now.returncode == 1 and str(pair.folder) in json.loads(held_now.stdout)["busy"]
    cleared = json.loads(run_cli("cache", "clear", "prepared", "--json", env=env).stdout)
    assert str(pair.folder) in cleared["removed"] and not pair.folder.exists()


@needs_proc
def test_a_zombies_partial_is_stale_for_the_next_merge_and_for_cache_clear(official):
    from crawler.registry import runs
    from merge import portable

    t = official
    pair = prepared.prepare(t / "a.ckpt", t / "c.safetensors", "A" * 64, "C" * 64)
    env = cli_env(INPAINT_ADVISOR_CACHE=str(t / "cache"))
    live = os.getppid()
    with _zombie() as dead:
        assert not portable.pid_alive(dead) and not runs._pid_alive(dead) and portable.pid_alive(live)
        # the next merge to the same output removes the zombie's hidden file, not a live process's
        out = t / "o.safetensors"
        zombies, lives = t / f".o.safetensors.partial-{dead}", t / f".o.safetensors.partial-{live}"
        for p in (zombies, lives):
            p.write_bytes(b"x" * 10)
        merge(t / "a.ckpt", t / "b.safetensors", t / "c.safetensors", out)
        assert out.exists() and not zombies.exists() and lives.exists()
        # in the cache: listed with their owners, and `cache clear partial` removes the dead one only
        in_pair = pair.folder / f".{prepared.DELTA_FILE}.partial-{dead}"
        in_pair.write_bytes(b"x" * 100)
        files = t / "cache" / "files" / "hf"
        files.mkdir(parents=True)
        running = files / f".model.safetensors.partial-{live}"
        running.write_bytes(b"y" * 7)
        download = files / ".inpaint-advisor-0123456789abcdef.partial"
        download.write_bytes(b"z" * 33)
        download.with_name(download.name + ".json").write_text("{}")
        unfinished = prepared.root() / "0000-1111-m1.0"
        unfinished.mkdir()
        (unfinished / f".{prepared.DELTA_FILE}.partial-{dead}").write_bytes(b"w" * 5)
        listed = json.loads(run_cli("cache", "list", "--json", env=env).stdout)
        got = {p["path"]: (p["kind"], p["size"], p["pid"], p["alive"]) for p in listed["partials"]}
        assert got == {str(in_pair): ("merge", 100, dead, False), str(running): ("merge", 7, live, True),
                       str(download): ("download", 33, None, False), str(unfinished): ("pair", 5, None, False)}
        shown = run_cli("cache", "list", env=env)
        assert shown.returncode == 0 and "Partial files" in shown.stdout and f"pid {dead}" in shown.stdout
        done = run_cli("cache", "clear", "partial", "--json", env=env)
        cleared = json.loads(done.stdout)
    assert done.returncode == 1 and cleared["busy"] == [str(running)] and running.exists()
    assert set(cleared["removed"]) == {str(in_pair), str(download), str(unfinished)}
    assert not in_pair.exists() and not download.exists() and not unfinished.exists()
    assert not download.with_name(download.name + ".json").exists()
    assert pair.delta.exists() and prepared.find("A" * 64, "C" * 64, 1.0) is not None  # only partial files went


def test_pid_alive_without_proc_falls_back_to_a_signal_test():
    from merge import portable

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert portable.pid_alive(child.pid, proc="/nonexistent") and portable.pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not portable.pid_alive(child.pid, proc="/nonexistent") and not portable.pid_alive(child.pid)
    assert not portable.pid_alive(0) and not portable.pid_alive(-1)  # process groups, never "alive"
