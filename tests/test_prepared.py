"""merge.prepared and `cache list|clear`: a family's A and C folded once into A - M*C; builds from it equal the
three-input merge within one ulp of the output dtype, read neither A nor C, and name them in the recipe."""

import fcntl
import json
import threading

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
