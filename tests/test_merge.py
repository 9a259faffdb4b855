"""The add-difference engine on tiny checkpoints with real key names (tests/sd_layouts.py)."""

import hashlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from merge import fused
from merge.checkpoint import open_checkpoint
from merge.engine import MergeError, merge
from merge.safetensors_io import CheckpointError
from tests.conftest import NO_TORCH_MERGE, ROOT, cli_env, needs_kernel, run_cli, same_bits
from tests.sd_layouts import write_checkpoint

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
POS_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))


def trio(tmp_path, family="sd1", a_extra=None, b_extra=None, a_dtype=torch.float16):
    paths = [tmp_path / f"{n}.safetensors" for n in "abc"]
    a = write_checkpoint(paths[0], family, "inpaint", 1, extra=a_extra, dtype=a_dtype)
    b = write_checkpoint(paths[1], family, "normal", 2, extra=b_extra)
    c = write_checkpoint(paths[2], family, "normal", 3)
    return paths, (a, b, c)


def expected(a, b, c, m=1.0, dtype=torch.float16):
    return (a.float() + (b.float() - c.float()) * m).to(dtype)


def test_every_rule_gives_exact_values(tmp_path, arithmetic):
    extra_a = {"model_ema.decay": torch.tensor(0.9999), "only.in.a": torch.ones(3, dtype=torch.float16)}
    extra_b = {"only.in.b": torch.ones(2, dtype=torch.float16)}
    (pa, pb, pc), (a, b, c) = trio(tmp_path, a_extra=extra_a, b_extra=extra_b)
    out = tmp_path / "out.safetensors"
    r = merge(pa, pb, pc, out)
    o = load_file(out)
    assert set(o) == set(a)  # output keys are A's
    for k in (
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.conv_out.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
    ):
        assert torch.equal(o[k], expected(a[k], b[k], c[k]))
    # first conv: delta on channels 0-3, mask and masked-image channels 4-8 stay A's
    assert o[CONV_IN].shape == (b[CONV_IN].shape[0], 9, 3, 3)  # A's nine input channels, B's width
    assert torch.equal(o[CONV_IN][:, :4], expected(a[CONV_IN][:, :4], b[CONV_IN], c[CONV_IN]))
    assert torch.equal(o[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    assert r.channel_merged == [CONV_IN]
    # integers never go through arithmetic; keys only in A are copied; only-in-B is reported
    assert o[POS_IDS].dtype == torch.int64 and torch.equal(o[POS_IDS], a[POS_IDS])
    assert torch.equal(o["only.in.a"], a["only.in.a"])
    assert o["model_ema.decay"].dtype == torch.float16
    assert r.only_in_b == ["only.in.b"] and r.nonfinite == []


def test_multiplier_zero_and_equal_b_c_give_a_bit_for_bit(tmp_path, arithmetic):
    (pa, pb, pc), (a, b, c) = trio(tmp_path)
    neg_zero = a["model.diffusion_model.out.2.bias"].clone()
    neg_zero[0] = -0.0
    save_file({**a, "model.diffusion_model.out.2.bias": neg_zero}, str(pa))
    a = load_file(pa)
    for m, base in ((0.0, pc), (1.0, pb), (0.7, pb)):
        out = tmp_path / f"out-{m}-{base.stem}.safetensors"
        merge(pa, pb, base, out, multiplier=m)
        o = load_file(out)
        for k in a:
            assert o[k].view(torch.uint8).equal(a[k].contiguous().view(torch.uint8)), (m, k)


def test_multiplier_scales_the_delta_and_dtypes_are_honoured(tmp_path, arithmetic):
    (pa, pb, pc), (a, b, c) = trio(tmp_path)
    k = "model.diffusion_model.out.2.weight"
    for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out = tmp_path / f"{dtype}.safetensors"
        merge(pa, pb, pc, out, multiplier=0.5, dtype=dtype)
        o = load_file(out)
        assert o[k].dtype == torch_dtype
        assert torch.equal(o[k], expected(a[k], b[k], c[k], 0.5, torch_dtype))
        assert o[POS_IDS].dtype == torch.int64


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_merge(tmp_path, family):
    (pa, pb, pc), (a, b, c) = trio(tmp_path, family)
    out = tmp_path / "out.safetensors"
    r = merge(pa, pb, pc, out)
    o = load_file(out)
    assert r.family == family and r.channel_merged == [CONV_IN]
    k = next(k for k in a if k.endswith("attn2.to_k.weight"))
    assert torch.equal(o[k], expected(a[k], b[k], c[k]))
    assert torch.equal(o[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    with safe_open(out, "pt") as f:
        arch = f.metadata()["modelspec.architecture"]
    assert arch == {"sd2": "stable-diffusion-v2-inpainting", "sdxl": "stable-diffusion-xl-v1-inpainting"}[family]


def test_prediction_markers_of_b_are_carried_with_a_warning(tmp_path):
    marker = {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    (pa, pb, pc), _ = trio(tmp_path, "sdxl", b_extra=marker)
    out = tmp_path / "out.safetensors"
    r = merge(pa, pb, pc, out)
    o = load_file(out)
    assert "v_pred" in o and "ztsnr" in o and r.markers == ["v_pred", "ztsnr"]
    assert any("A predicts epsilon but B predicts v" in w for w in r.warnings)
    with safe_open(out, "pt") as f:
        assert f.metadata()["modelspec.prediction_type"] == "v"


def test_metadata_names_the_inputs_by_sha256(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    out = tmp_path / "majic-inpainting.safetensors"
    merge(pa, pb, pc, out)
    with safe_open(out, "pt") as f:
        md = f.metadata()
    shas = [hashlib.sha256(p.read_bytes()).hexdigest().upper() for p in (pa, pb, pc)]
    assert md["modelspec.sai_model_spec"] == "1.0.0"
    assert md["modelspec.architecture"] == "stable-diffusion-v1-inpainting"
    assert md["modelspec.title"] == "majic-inpainting" and md["modelspec.resolution"] == "512x512"
    assert md["modelspec.merged_from"] == "a.safetensors, b.safetensors, c.safetensors"
    recipe = json.loads(md["sd_merge_recipe"])
    assert recipe["interp_method"] == "Add difference" and recipe["multiplier"] == 1.0
    assert [recipe["primary_model_hash"], recipe["secondary_model_hash"], recipe["tertiary_model_hash"]] == shas
    assert list(json.loads(md["sd_merge_models"])) == shas
    own = json.loads(md["inpaint_advisor.recipe"])
    assert own["inputs"]["B"]["sha256"] == shas[1] and own["formula"] == "A + (B - C) * M"


def test_mixed_families_are_refused_with_a_clear_message(tmp_path):
    pa = tmp_path / "a.safetensors"
    write_checkpoint(pa, "sd1", "inpaint", 1)
    write_checkpoint(tmp_path / "b.safetensors", "sdxl", "normal", 2)
    write_checkpoint(tmp_path / "c.safetensors", "sd1", "normal", 3)
    wrong = r"B \(the fine-tune\) is SDXL, but A \(the inpainting model\) is SD 1.x inpainting"
    with pytest.raises(MergeError, match=wrong):
        merge(pa, tmp_path / "b.safetensors", tmp_path / "c.safetensors", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_swapped_slots_are_refused_and_named(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    result = run_cli(
        "merge", "--inpaint", str(pb), "--model", str(pa), "--base", str(pc), "--out", str(tmp_path / "o.safetensors")
    )
    assert result.returncode == 1
    swapped = "A (the inpainting model) is a normal SD 1.x model but B (the fine-tune) is SD 1.x inpainting"
    assert swapped in result.stderr
    assert "swapped" in result.stderr and "A = --inpaint" in result.stderr  # the CLI names its flags
    with pytest.raises(MergeError, match="not an inpainting model"):
        merge(pb, pb, pc, tmp_path / "o.safetensors")


def test_b_that_is_already_inpainting_is_refused(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    with pytest.raises(MergeError, match="B already is an inpainting model"):
        merge(pa, pa, pc, tmp_path / "o.safetensors")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['EXPLOIT_MARKER'])}",))


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Exploit()}, bad)
    with pytest.raises(CheckpointError, match="refusing to load this pickle"):
        open_checkpoint(bad)
    assert not marker.exists()
    with open(bad, "rb") as f:  # the file really is an exploit: a plain unpickle would have run it
        assert b"system" in f.read()


@pytest.mark.parametrize("as_ckpt", ["a", "c"])  # C: A's copies run in merge.direct, the sums through torch
def test_ckpt_inputs_with_nested_state_dict_merge_like_safetensors(tmp_path, as_ckpt):
    extra_a = {"only.in.a": torch.ones(3, dtype=torch.float16)}
    (pa, pb, pc), (a, b, c) = trio(tmp_path, a_extra=extra_a)
    ckpt = tmp_path / f"{as_ckpt}.ckpt"
    torch.save({"state_dict": dict(a if as_ckpt == "a" else c), "global_step": 470000}, ckpt)
    inputs = (ckpt, pb, pc) if as_ckpt == "a" else (pa, pb, ckpt)
    merge(*inputs, tmp_path / "from-ckpt.safetensors")
    merge(pa, pb, pc, tmp_path / "from-st.safetensors")
    x, y = load_file(tmp_path / "from-ckpt.safetensors"), load_file(tmp_path / "from-st.safetensors")
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    assert torch.equal(x["only.in.a"], extra_a["only.in.a"])


def test_truncated_input_gets_a_clear_error(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    data = pb.read_bytes()
    pb.write_bytes(data[: len(data) // 2])
    with pytest.raises(MergeError, match="truncated"):
        merge(pa, pb, pc, tmp_path / "o.safetensors")
    pb.write_bytes(b"<html>not a model</html>")
    with pytest.raises(MergeError, match="not a safetensors file"):
        merge(pa, pb, pc, tmp_path / "o.safetensors")


def test_output_never_overwrites_an_input_or_an_existing_file(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    before = pb.read_bytes()
    with pytest.raises(MergeError, match="is one of the inputs"):
        merge(pa, pb, pc, pb, force=True)
    assert pb.read_bytes() == before
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(MergeError, match="exists") as refused:
        merge(pa, pb, pc, out)
    assert refused.value.reason == "exists"
    result = run_cli("merge", "-a", str(pa), "-b", str(pb), "-c", str(pc), "-o", str(out))
    assert result.returncode == 1 and "pass --force to replace it" in result.stderr
    assert out.read_bytes() == b"keep me"
    merge(pa, pb, pc, out, force=True)
    assert out.read_bytes() != b"keep me"


def test_a_full_disk_is_refused_before_any_work(tmp_path, monkeypatch):
    (pa, pb, pc), _ = trio(tmp_path)
    import merge.plan as plan

    monkeypatch.setattr(plan.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(MergeError, match="not enough free space"):
        merge(pa, pb, pc, tmp_path / "o.safetensors")
    assert list(tmp_path.glob("*o.safetensors*")) == []


def test_nan_and_inf_in_the_output_are_reported(tmp_path, arithmetic):
    (pa, pb, pc), (a, b, c) = trio(tmp_path)
    k = "model.diffusion_model.out.2.bias"
    bad = b[k].clone()
    bad[0] = float("inf")
    save_file({**b, k: bad}, str(pb))
    r = merge(pa, pb, pc, tmp_path / "o.safetensors")
    assert r.nonfinite == [k]


_SLOW_MERGE = """
import sys, time
from merge.engine import plan_merge, run_merge
plan = plan_merge(*sys.argv[1:5])
seen = [0]
def progress(n):
    seen[0] += 1
    if seen[0] == 200:
        print("HALF", flush=True)
        time.sleep(60)
run_merge(plan, progress=progress)
"""


def test_a_merge_killed_mid_write_leaves_no_output(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    out = tmp_path / "o.safetensors"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_MERGE, str(pa), str(pb), str(pc), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path)),
        cwd=ROOT,
    )
    try:
        assert child.stdout.readline().strip() == "HALF"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
    assert not out.exists()
    partials = list(tmp_path.glob(".o.safetensors.partial-*"))
    assert len(partials) == 1  # the half-written file never carried OUT's name
    merge(pa, pb, pc, out)  # the next merge cleans it up
    assert out.exists() and not list(tmp_path.glob(".o.safetensors.partial-*"))


def test_cli_merge_prints_a_summary_and_json(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path, b_extra={"only.in.b": torch.ones(2, dtype=torch.float16)})
    args = ["merge", "-a", str(pa), "-b", str(pb), "-c", str(pc), "-o", str(tmp_path / "o.safetensors")]
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    human = run_cli(*args, env=env)
    assert human.returncode == 0, human.stderr
    assert "1 by channel" in human.stdout and "1 keys only in B were dropped" in human.stdout
    data = json.loads(run_cli(*args, "--force", "--json", env=env).stdout)
    assert data["channel_merged"] == [CONV_IN] and data["only_in_b"] == ["only.in.b"] and data["device"] == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_agree_to_one_ulp(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path, "sdxl")
    merge(pa, pb, pc, tmp_path / "cpu.safetensors", device="cpu")
    merge(pa, pb, pc, tmp_path / "gpu.safetensors", device="cuda")
    x, y = load_file(tmp_path / "cpu.safetensors"), load_file(tmp_path / "gpu.safetensors")
    for k in x:
        if x[k].is_floating_point():
            ulps = (
                (x[k].view(torch.int16).int() - y[k].view(torch.int16).int()).abs().max().item() if x[k].numel() else 0
            )
            assert ulps <= 1, k


_PLAN_ONLY = """
import sys
from merge.engine import MergeError, plan_merge
try:
    plan_merge(*sys.argv[1:5])
except MergeError as exc:
    print("refused:", exc)
else:
    print("planned")
print("torch imported:", "torch" in sys.modules)
"""


def test_checks_answer_before_torch_is_imported(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    out = str(tmp_path / "o.safetensors")
    for inputs, verdict in (((pa, pb, pc), "planned"), ((pb, pa, pc), "refused: A (the inpainting model) is a normal")):
        child = subprocess.run(
            [sys.executable, "-c", _PLAN_ONLY, *map(str, inputs), out], capture_output=True, text=True, cwd=ROOT
        )
        assert child.stdout.startswith(verdict), child.stderr
        assert "torch imported: False" in child.stdout


@needs_kernel
def test_a_cpu_merge_of_safetensors_runs_without_torch_and_stores_the_torch_paths_bits(tmp_path, monkeypatch):
    (pa, pb, pc), (a, b, c) = trio(tmp_path, a_dtype=torch.float32)  # A converted on copies and the first conv
    k = "model.diffusion_model.out.2.bias"
    b[k] = b[k].clone()
    b[k][0] = float("nan")
    save_file(dict(b), str(pb))
    direct = tmp_path / "direct.safetensors"
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path))
    child = subprocess.run([sys.executable, "-c", NO_TORCH_MERGE, str(pa), str(pb), str(pc), str(direct)],
                           capture_output=True, text=True, cwd=ROOT, env=env)  # fmt: skip
    assert child.stdout.strip() == f"torch imported: False nonfinite: ['{k}']", child.stderr
    monkeypatch.setattr(fused, "kernel", lambda: None)
    r = merge(pa, pb, pc, tmp_path / "torch.safetensors")
    assert r.nonfinite == [k]
    x, y = load_file(direct), load_file(tmp_path / "torch.safetensors")
    assert set(x) == set(y) == set(a)
    for name in x:
        assert same_bits(x[name], y[name]), name


def test_empty_float_tensors_pass_through(tmp_path, arithmetic):
    (pa, pb, pc), _ = trio(tmp_path)
    for p in (pa, pb, pc):
        save_file({**load_file(p), "empty.weight": torch.empty(0, 4, dtype=torch.float16)}, str(p))
    r = merge(pa, pb, pc, tmp_path / "o.safetensors")
    assert load_file(tmp_path / "o.safetensors")["empty.weight"].shape == (0, 4)
    assert r.nonfinite == []


def test_populating_the_output_ahead_keeps_what_was_written(tmp_path):
    from merge.safetensors_io import SafetensorsWriter

    first, second = torch.arange(8, dtype=torch.float32), torch.full((4 * 2**20,), 2.5)
    w = SafetensorsWriter(tmp_path / "o.safetensors", [("x", "F32", (8,)), ("y", "F32", (4 * 2**20,))], {})
    w.write("x", first)  # written before the populating thread maps the pages in: must survive it
    if sys.platform.startswith("linux"):
        assert w.start_populating()
    w._join_populator()
    w.write("y", second)
    w.commit()
    o = load_file(tmp_path / "o.safetensors")
    assert torch.equal(o["x"], first) and torch.equal(o["y"], second)

    w = SafetensorsWriter(tmp_path / "p.safetensors", [("y", "F32", (64 * 2**20,))], {})
    w.start_populating()
    w.abort()  # stops the thread before unmapping: no error, no file
    assert not list(tmp_path.glob("*p.safetensors*"))


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef":
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_READ is Linux-only")
def test_read_ahead_maps_the_inputs_in_before_the_merge_reads_them(tmp_path):
    from merge import pages, readahead
    from merge.plan import plan_merge

    (pa, pb, pc), _ = trio(tmp_path)
    plan = plan_merge(pa, pb, pc, tmp_path / "o.safetensors")
    try:
        assert pages.available() and all(_mapped_kib(p) == 0 for p in (pa, pb, pc))
        readahead.read_ahead(plan, [0], threading.Event())
        for p in (pa, pb, pc):  # every page holding tensor bytes is mapped in
            data_start = 8 + int.from_bytes(p.read_bytes()[:8], "little")
            assert _mapped_kib(p) * 1024 >= p.stat().st_size - data_start - mmap.PAGESIZE
    finally:
        plan.close()


def test_fp16_overflow_of_finite_values_is_reported_and_large_finite_values_are_not(tmp_path, arithmetic):
    (pa, pb, pc), (a, b, c) = trio(tmp_path)
    over, big = "model.diffusion_model.out.2.bias", "model.diffusion_model.out.0.bias"
    a2, b2, c2 = dict(a), dict(b), dict(c)
    for k, base, delta in ((over, 60000.0, 10000.0), (big, 30000.0, 30000.0)):
        a2[k] = a[k].clone()
        a2[k][0] = base
        b2[k], c2[k] = b[k].clone(), c[k].clone()
        b2[k][0], c2[k][0] = delta, 0.0
    for p, sd in ((pa, a2), (pb, b2), (pc, c2)):
        save_file(sd, str(p))
    r = merge(pa, pb, pc, tmp_path / "o.safetensors")
    o = load_file(tmp_path / "o.safetensors")
    assert r.nonfinite == [over]  # 70000 does not fit fp16; 60000 does
    assert o[over][0].item() == float("inf") and o[big][0].item() == 60000.0


def test_the_writer_hashes_its_file_as_tensors_are_done_in_order_and_admits_it_out_of_order(tmp_path):
    import hashlib

    from merge.safetensors_io import SafetensorsWriter

    layout = [("x", "F16", (64, 3)), ("y", "F32", (5,)), ("z", "F16", (0,))]
    values = {"x": torch.randn(64, 3).half(), "y": torch.randn(5), "z": torch.empty(0).half()}
    for order, hashed in (("xyz", True), ("yxz", False)):
        path = tmp_path / f"{order}.safetensors"
        w = SafetensorsWriter(path, layout, {"k": "v"}, hash_output=True)
        for name in order:
            w.write(name, values[name])
        w.commit()
        digest = hashlib.sha256(path.read_bytes()).hexdigest().upper()
        assert w.sha256 == (digest if hashed else None), order
    w = SafetensorsWriter(tmp_path / "h.safetensors", layout, {"k": "v"}, hash_output=True)
    with pytest.raises(RuntimeError, match="cannot change"):
        w.update_metadata({})
    w.abort()


def test_tensors_longer_than_a_step_are_merged_exactly_across_steps(tmp_path, arithmetic):
    """The torch path works in steps of merge.fused.CHUNK elements and the C loop in its own: a tensor of several
    steps, one of exactly one, and one a step and a bit come out exact (the tiny test layouts have none)."""
    from merge.fused import CHUNK

    big = {f"model.diffusion_model.big{n}.weight": n for n in (CHUNK, CHUNK + 7, 3 * CHUNK + 1)}
    made = [{k: torch.randn(n, generator=torch.Generator().manual_seed(seed)).half() for k, n in big.items()}
            for seed in (1, 2, 3)]  # fmt: skip
    paths = [tmp_path / f"{n}.safetensors" for n in "abc"]
    a = write_checkpoint(paths[0], "sd1", "inpaint", 1, extra=made[0])
    b = write_checkpoint(paths[1], "sd1", "normal", 2, extra=made[1])
    c = write_checkpoint(paths[2], "sd1", "normal", 3, extra=made[2])
    out = tmp_path / "out.safetensors"
    merge(*paths, out)
    o = load_file(out)
    for k in big:
        assert torch.equal(o[k], expected(a[k], b[k], c[k])), k


def test_an_output_another_run_wrote_meanwhile_is_kept_and_this_run_refuses_with_exists(tmp_path):
    """Two merges to one output: the one that finishes second finds the name taken and leaves it alone."""
    from merge.engine import plan_merge, run_merge

    (pa, pb, pc), _ = trio(tmp_path)
    out = tmp_path / "out.safetensors"
    plan = plan_merge(pa, pb, pc, out)  # the name is free when planned
    try:
        out.write_bytes(b"the other run's output")
        with pytest.raises(MergeError, match="exists: another run wrote it meanwhile") as failed:
            run_merge(plan)
    finally:
        plan.close()
    assert failed.value.reason == "exists" and out.read_bytes() == b"the other run's output"
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
    forced = plan_merge(pa, pb, pc, out, force=True)  # --force: the output takes the name, whatever is there
    try:
        run_merge(forced)
    finally:
        forced.close()
    assert set(load_file(out)) and out.read_bytes() != b"the other run's output"


def test_two_merges_to_one_output_at_once_leave_one_whole_output_and_one_refusal(tmp_path):
    (pa, pb, pc), _ = trio(tmp_path)
    write_checkpoint(tmp_path / "b2.safetensors", "sd1", "normal", 7)
    out = tmp_path / "both.safetensors"
    runs = [subprocess.Popen([sys.executable, "-m", "advisor", "merge", "-a", str(pa), "-b", str(b), "-c", str(pc),
                              "-o", str(out), "--json"], stdout=subprocess.PIPE, text=True, env=cli_env())
            for b in (pb, tmp_path / "b2.safetensors")]  # fmt: skip
    done = [(p.wait(timeout=120), json.loads(p.stdout.read())) for p in runs]
    assert sorted(rc for rc, _ in done)[0] == 0 and sorted(rc for rc, _ in done)[1] != 0, done
    loser = next(j for rc, j in done if rc != 0)  # refused at planning or at its rename: the same refusal
    assert loser["error"]["code"] == "merge-refused" and " exists" in loser["error"]["message"], loser
    assert "--force" in loser["error"]["message"] and [p for p in tmp_path.iterdir() if ".partial-" in p.name] == []
    assert load_file(out)  # whole: the winner's
