"""merge.zip_pickle: torch zip checkpoints read in place, equal to what torch.load gives, never executed."""

import zipfile
from collections import OrderedDict

import pytest
import torch

from merge import direct
from merge.checkpoint import StateDictSource, ZipPickleSource, open_checkpoint
from merge.engine import merge, plan_merge
from merge.header import CheckpointError
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


# -- crafted files (the build-integrity issue): what a hostile .ckpt may try ---------------------------------------
def _with_pickle(path, to, pickled: bytes):
    return _rewritten(path, to, lambda name, data: pickled if name.endswith("/data.pkl") else data)


def _data_pkl(path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def test_a_pickle_that_builds_state_onto_a_storage_class_cannot_change_how_later_files_are_read(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(6, dtype=torch.float32)}}, good)
    # after the state dict: torch.FloatStorage with {"dtype": "F16"} BUILT onto it (then popped)
    poison = b'ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00F16sb0'
    pickled = _data_pkl(good)
    assert pickled.endswith(b".")
    poisoned = _with_pickle(good, tmp_path / "poisoned.ckpt", pickled[:-1] + poison + b".")
    with pytest.raises(Exception):  # noqa: B017 - torch's weights-only loader refuses it: so must we
        torch.load(poisoned, weights_only=True)
    assert parse(poisoned) is None  # refused here: never read differently from torch
    with pytest.raises(CheckpointError):
        open_checkpoint(poisoned)
    again = parse(good)  # and the next file of the process reads as it is
    assert again is not None and again.tensors["w"].dtype == "F32"
    src = open_checkpoint(good)
    assert torch.equal(src.read("w"), torch.arange(6, dtype=torch.float32))
    src.close()


def test_a_real_module_state_dict_with_its_metadata_is_read_here(tmp_path):
    path = tmp_path / "m.ckpt"
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    torch.save({"state_dict": model.state_dict(), "global_step": 9}, path)  # an OrderedDict with _metadata
    parsed = parse(path)
    assert parsed is not None and set(parsed.tensors) == set(model.state_dict())


class _Storage:
    def __init__(self, numel, key="0", kind="FloatStorage"):
        self.numel, self.key, self.kind = numel, key, kind


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, shape, stride, False, OrderedDict())


def _crafted(path, tensors: dict, numel: int, real: dict | None = None):
    """A torch.save archive whose pickle says what ``tensors`` say (storage "0" of ``numel`` floats, or the
    storages of ``real`` saved in order: "0", "1", ...)."""
    import io
    import pickle

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, _Storage):
                return None
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)

        def reducer_override(self, obj):
            return (torch._utils._rebuild_tensor_v2, obj.args) if isinstance(obj, _Tensor) else NotImplemented

    saved = path.with_name("real.ckpt")
    torch.save(real or {"x": torch.zeros(numel)}, saved)
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(tensors)
    return _with_pickle(saved, path, buf.getvalue())


@pytest.mark.parametrize("offset, shape, stride", [(-(2**28), (4,), (1,)), (-1, (2,), (1,)), (60, (8,), (1,)),
                                                    (0, (4, 4), (1, 21)), (65, (0,), (1,))])  # fmt: skip
def test_a_tensor_outside_its_storage_is_refused_before_a_byte_is_read(tmp_path, offset, shape, stride):
    storage = _Storage(64)
    ok = _crafted(tmp_path / "ok.ckpt", {"w": _Tensor(storage, 0, (8,), (1,))}, 64)
    assert parse(ok) is not None  # the control: the same archive with a tensor inside
    bad = _crafted(tmp_path / "bad.ckpt", {"w": _Tensor(storage, offset, shape, stride)}, 64)
    assert parse(bad) is None


def test_a_storage_that_runs_past_the_end_of_the_file_is_refused(tmp_path):
    import struct

    path = tmp_path / "m.ckpt"
    torch.save({"w": torch.ones(100)}, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        entry = next(i for i in z.infolist() if "/data/" in i.filename)
    # the central directory entry of the data member: its sizes made far larger than the file
    at = next(i for i in range(len(raw)) if raw[i:i + 4] == b"PK\x01\x02"
              and raw[i + 46:i + 46 + len(entry.filename)] == entry.filename.encode())  # fmt: skip
    struct.pack_into("<II", raw, at + 20, 10**9, 10**9)
    damaged = tmp_path / "past-the-end.ckpt"
    damaged.write_bytes(bytes(raw))
    assert parse(damaged) is None


def test_probe_and_lookup_classify_a_zip_ckpt_as_merge_reads_it(tmp_path):
    """The official SD 1.5 inpainting model is a .ckpt: probe and lookup read it with merge's reader."""
    from advisor.advice.lookup import lookup
    from advisor.local.probe import probe
    from tests.sd_layouts import checkpoint_shapes, make_state_dict

    path = tmp_path / "sd-v1-5-inpainting-tiny.ckpt"
    torch.save({"state_dict": make_state_dict(checkpoint_shapes("sd1", "inpaint", 8), 1, torch.float32),
                "global_step": 440000}, path)  # fmt: skip
    p = probe(path)
    assert (p.format, p.family, p.variant, p.in_channels) == ("pickle", "sd1", "inpaint", 9)
    answer = lookup(str(path), db=str(tmp_path / "none.db"), offline=True)
    assert answer.match is not None and answer.match.family == "sd1"
    assert answer.recommendation is not None and answer.recommendation.kind == "already-inpainting"


def _torch_reads(path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - torch refused it
        return None


def test_a_storage_mentioned_again_with_another_size_or_type_is_read_as_torch_reads_it_or_refused(tmp_path):
    real = {"x": torch.arange(8, dtype=torch.float16), "y": torch.arange(4, dtype=torch.float16) + 100}
    x, y = _Storage(8, "0", "HalfStorage"), _Storage(4, "1", "HalfStorage")
    ok = _crafted(tmp_path / "ok.ckpt", {"x": _Tensor(x, 0, (8,), (1,)), "y": _Tensor(y, 0, (4,), (1,))}, 0, real)
    assert parse(ok) is not None  # the control
    crafted = {  # y on x's storage: a bigger size, reading on into the next member; or another type
        "next": {"x": _Tensor(x, 0, (8,), (1,)), "y": _Tensor(_Storage(12, "0", "HalfStorage"), 8, (4,), (1,))},
        "dtype": {"x": _Tensor(x, 0, (8,), (1,)), "y": _Tensor(_Storage(4, "0", "FloatStorage"), 0, (4,), (1,))},
    }
    for what, tensors in crafted.items():
        path = _crafted(tmp_path / f"{what}.ckpt", tensors, 0, real)
        assert parse(path) is None, what  # left to torch, which reads it its way or refuses it
        by_torch = _torch_reads(path)
        if by_torch is None:
            with pytest.raises(CheckpointError):
                open_checkpoint(path)
            continue
        src = open_checkpoint(path)
        try:
            assert all(torch.equal(src.read(k), v) for k, v in by_torch.items()), what
        finally:
            src.close()


def test_a_member_of_another_size_than_its_storage_or_a_name_twice_is_left_to_torch(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"w": torch.ones(16)}, path)
    longer = _rewritten(path, tmp_path / "long.ckpt",
                        lambda name, data: data + b"\0" * 64 if "/data/" in name else data)  # fmt: skip
    assert parse(longer) is None and _torch_reads(longer) is None
    twice = tmp_path / "twice.ckpt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(twice, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        member = next(n for n in src.namelist() if "/data/" in n)
        with pytest.warns(UserWarning, match="Duplicate name"):
            dst.writestr(member, torch.full((16,), 0.5).numpy().tobytes())  # a second copy, read last by zipfile
    assert parse(twice) is None
    src = open_checkpoint(twice)
    try:
        assert torch.equal(src.read("w"), _torch_reads(twice)["w"])  # torch's reading: the first copy
    finally:
        src.close()
