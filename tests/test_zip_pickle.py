"""merge.zip_pickle: torch zip checkpoints read in place, equal to what torch.load gives, never executed."""

import zipfile

import pytest
import torch

from merge import direct
from merge.checkpoint import StateDictSource, ZipPickleSource, open_checkpoint
from merge.engine import merge, plan_merge
from merge.zip_pickle import parse
from tests.test_merge import trio


def _tensors():
    g = torch.Generator().manual_seed(7)
    shared = torch.randn(40, generator=g)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3),
        "view.tail": shared[10:30],  # a view into a storage other tensors share: an offset inside it
        "view.head": shared[:10].reshape(2, 5),
        "transposed": torch.randn(4, 6, generator=g).t(),  # strides of a transpose: read through torch
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def test_a_zip_checkpoint_reads_every_tensor_as_torch_load_does(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": _tensors(), "global_step": 470000, "epoch": 3}, path)
    src = open_checkpoint(path)
    assert isinstance(src, ZipPickleSource)
    expected = torch.load(path, weights_only=True)["state_dict"]
    assert set(src.tensors) == set(expected)
    for name, t in expected.items():
        got = src.read(name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t.detach()), name
    assert src.segments("transposed") is None  # not a plain range: the engine's torch path
    (mapping, start, end), = src.segments("view.tail")
    assert end - start == 20 * 4 and bytes(mapping[start:end]) == expected["view.tail"].numpy().tobytes()
    src.close()


def test_a_zip_checkpoint_with_anything_but_weights_goes_to_torch_which_refuses_it(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hparams": zipfile.ZipInfo("x")}, path)
    assert parse(path) is None  # a global outside the allowlist: not parsed here, not imported either
    with pytest.raises(Exception, match="refusing to load this pickle"):
        open_checkpoint(path)


def test_a_legacy_pickle_is_still_read_by_torch(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    src = open_checkpoint(path)
    assert isinstance(src, StateDictSource) and torch.equal(src.read("w"), torch.ones(3))


def _rewritten(path, to, change, compression=zipfile.ZIP_STORED):
    """``path``'s archive written again to ``to``, each entry's bytes through ``change(name, data)``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(to, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info)))
    return to


def test_a_compressed_or_big_endian_archive_is_left_to_torch(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"w": torch.ones(3)}, path)
    deflated = _rewritten(path, tmp_path / "deflated.ckpt", lambda name, data: data, zipfile.ZIP_DEFLATED)
    assert parse(deflated) is None
    big = _rewritten(path, tmp_path / "big.ckpt", lambda name, data: b"big" if name.endswith("/byteorder") else data)
    assert parse(big) is None
    assert parse(_rewritten(path, tmp_path / "same.ckpt", lambda name, data: data)) is not None  # the control


def test_a_merge_with_a_zip_checkpoint_is_all_c_loop_and_equals_the_safetensors_merge(tmp_path):
    from safetensors.torch import load_file, save_file

    from merge import fused, pages
    from merge.safetensors_io import SafetensorsWriter

    (pa, pb, pc), (a, b, c) = trio(tmp_path)
    a32 = {k: v.float() if v.is_floating_point() else v for k, v in a.items()}
    ckpt, st = tmp_path / "a.ckpt", tmp_path / "a32.safetensors"
    torch.save({"state_dict": a32, "global_step": 1}, ckpt)
    save_file(a32, st)
    if fused.kernel() is not None:
        plan = plan_merge(ckpt, pb, pc, tmp_path / "x.safetensors")
        writer = SafetensorsWriter(plan.out, [(e.name, e.dtype, e.shape) for e in plan.entries], {}, create=False)
        held = pages.Addresses()
        try:
            writer.create()
            tasks = direct.tasks_for(plan, writer, fused.kernel(), held)
            assert len(tasks) == len(plan.entries)  # every tensor a range of the mapped archive: no torch needed
        finally:
            held.close()
            writer.abort()
            plan.close()
    merge(ckpt, pb, pc, tmp_path / "from-ckpt.safetensors")
    merge(st, pb, pc, tmp_path / "from-st.safetensors")
    x, y = load_file(tmp_path / "from-ckpt.safetensors"), load_file(tmp_path / "from-st.safetensors")
    assert set(x) == set(y) == set(a) and all(torch.equal(x[k], y[k]) for k in x)


def test_a_storage_shorter_than_its_tensors_is_not_read_past(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"w": torch.ones(100)}, path)
    damaged = _rewritten(path, tmp_path / "short.ckpt", lambda name, data: data[:40] if "/data/" in name else data)
    assert parse(damaged) is None
