"""Checkpoint files from anywhere: every malformed one is one CheckpointError, and one line from the CLI."""

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merge import layout
from merge.checkpoint import open_checkpoint
from merge.header import CheckpointError, read_header
from merge.plan import MergeError, plan_merge
from tests.conftest import run_cli
from tests.sd_layouts import checkpoint_shapes, write_checkpoint


def safetensors_bytes(header, data: bytes = b"", *, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def _t(dtype="F16", shape=(2,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED = {
    "a JSON list": (safetensors_bytes([]), "not a JSON object"),
    "null": (safetensors_bytes(None), "not a JSON object"),
    "a number": (safetensors_bytes(123), "not a JSON object"),
    "metadata not a map": (safetensors_bytes({"__metadata__": [1, 2]}), "__metadata__"),
    "metadata values not strings": (safetensors_bytes({"__metadata__": {"a": 1}}), "__metadata__"),
    "shape a string": (safetensors_bytes({"x": _t(shape="abc")}, b"\0" * 4), "malformed shape"),
    "shape of booleans": (safetensors_bytes({"x": _t(shape=(True, 2))}, b"\0" * 4), "malformed shape"),
    "negative dimension": (safetensors_bytes({"x": _t(shape=(-2,))}, b"\0" * 4), "malformed shape"),
    "dtype a list": (safetensors_bytes({"x": _t(dtype=["F16"])}, b"\0" * 4), "unsupported dtype"),
    "unknown dtype": (safetensors_bytes({"x": _t(dtype="F128")}, b"\0" * 4), "unsupported dtype"),
    "entry not an object": (safetensors_bytes({"x": [1, 2]}), "not an object"),
    "negative offset": (safetensors_bytes({"x": _t(offsets=(-4, 0))}, b"\0" * 4), "data_offsets"),
    "offsets backwards": (safetensors_bytes({"x": _t(offsets=(4, 0))}, b"\0" * 4), "bytes at its offsets"),
    "size disagrees with dtype x shape": (safetensors_bytes({"x": _t(shape=(3,))}, b"\0" * 4), "make 6"),
    "overlapping tensors": (safetensors_bytes({"x": _t(offsets=(0, 4)), "y": _t(offsets=(2, 6))}, b"\0" * 6),
                            "overlaps"),
    "a gap between tensors": (safetensors_bytes({"x": _t(offsets=(0, 4)), "y": _t(offsets=(8, 12))}, b"\0" * 12),
                              "gap"),
    "bytes after the last tensor": (safetensors_bytes({"x": _t()}, b"\0" * 9), "after the last tensor"),
    "truncated data": (safetensors_bytes({"x": _t(shape=(8,), offsets=(0, 16))}, b"\0" * 4), "truncated"),
    "deeply nested JSON": (safetensors_bytes(None, raw=b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
                           "nested too deeply"),
    "not UTF-8": (safetensors_bytes(None, raw=b'{"\xff\xfe": 1}'), "not UTF-8"),
    "not JSON": (safetensors_bytes(None, raw=b"{nope"), "not valid JSON"),
    "header longer than the file": (struct.pack("<Q", 10**6) + b"{}", "truncated"),
    "an HTML error page": (b"<html><body>429 Too Many Requests</body></html>", "not a safetensors file"),
    "empty": (b"", "too short"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_safetensors_file_is_one_clear_error(tmp_path, case):
    content, message = MALFORMED[case]
    f = tmp_path / "bad.safetensors"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_header(f)
    result = run_cli("probe", str(f))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    as_json = run_cli("probe", str(f), "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["error"]["code"] == "bad-checkpoint"


def _trio(tmp_path) -> list[Path]:
    paths = [tmp_path / f"{n}.safetensors" for n in "abc"]
    for path, variant, seed in zip(paths, ("inpaint", "normal", "normal"), (1, 2, 3), strict=True):
        write_checkpoint(path, "sd1", variant, seed)
    return paths


def test_a_malformed_input_to_merge_is_one_line_and_nothing_is_written(tmp_path):
    a, b, c = _trio(tmp_path)
    b.write_bytes(MALFORMED["overlapping tensors"][0])
    out = tmp_path / "out.safetensors"
    result = run_cli("merge", "-a", str(a), "-b", str(b), "-c", str(c), "-o", str(out))
    assert result.returncode == 1 and "overlaps" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><title>Login</title>", b"just some text\n", b"\x00" * 64])
def test_a_file_named_ckpt_that_is_not_a_pytorch_checkpoint_says_so(tmp_path, content):
    f = tmp_path / "model.ckpt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as refused:
        open_checkpoint(f)
    assert "code execution" not in str(refused.value)


def test_a_truncated_zip_checkpoint_is_one_error(tmp_path):
    import torch

    f = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, f)
    f.write_bytes(f.read_bytes()[:700])
    with pytest.raises(CheckpointError, match="not a readable"):
        open_checkpoint(f)


@pytest.mark.parametrize("config", [b"{broken", b"[1, 2]", b"\xff\xfe", b'{"in_channels": "nine"}'])
def test_a_diffusers_folder_with_a_broken_config_is_one_line(tmp_path, config):
    folder = tmp_path / "folder"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_bytes(config)
    result = run_cli("probe", str(folder))
    if config.startswith(b'{"in'):  # readable, only the value is odd: probed as unknown, not a crash
        assert result.returncode == 0 and "unknown" in result.stdout
        return
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "config.json" in result.stderr


# -- fuzzing: a real layout's header, mutated ---------------------------------------------------------------------
_SHAPES = {k: v for k, v in checkpoint_shapes("sd1", "inpaint", scale=16).items() if all(isinstance(d, int) for d in v)}
# what the classifier reads (the first conv, a cross-attention key, text-encoder prefixes) and some of the rest
_NAMES = sorted({k for k in _SHAPES if "input_blocks.0.0" in k or "attn2.to_k" in k}
                | set(sorted(_SHAPES)[::40]))  # fmt: skip
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def _real_header() -> tuple[dict, int]:
    header, offset = {}, 0
    for name in _NAMES:
        shape = list(_SHAPES[name])
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    return header, offset


@st.composite
def mutated_files(draw) -> bytes:
    header, size = _real_header()
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from([*_NAMES, "__metadata__"]))
        entry = header.get(name)
        what = draw(st.sampled_from(["value", "field", "offset", "shape", "drop", "dtype"]))
        if what == "drop":
            header.pop(name, None)
        elif what == "value" or not isinstance(entry, dict):
            header[name] = draw(_json_values)
        elif what == "field":
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(_json_values)
        elif what == "offset" and isinstance(entry.get("data_offsets"), list) and entry["data_offsets"]:
            offsets = entry["data_offsets"]
            i = draw(st.integers(0, 1)) % len(offsets)
            offsets[i] = (offsets[i] if isinstance(offsets[i], int) else 0) + draw(st.integers(-(2**40), 2**40))
        elif what == "shape" and isinstance(entry.get("shape"), list):
            entry["shape"] = [draw(st.integers(-3, 2**20)) for _ in range(draw(st.integers(0, 5)))]
        elif what == "dtype":
            entry["dtype"] = draw(st.sampled_from(["F16", "F32", "BF16", "I64", "BOOL", "F8_E4M3", "X", ""]))
    raw = json.dumps(header).encode()
    if draw(st.booleans()):  # and a few raw bytes changed
        raw = bytearray(raw)
        for _ in range(draw(st.integers(1, 3))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        raw = bytes(raw)
    data = b"\0" * max(0, size + draw(st.integers(-64, 64)))
    return struct.pack("<Q", len(raw)) + raw + data


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])  # fmt: skip
@given(content=mutated_files())
def test_fuzzed_headers_raise_only_the_projects_own_error(tmp_path, content):
    f = tmp_path / "fuzz.safetensors"
    f.write_bytes(content)
    try:
        header = read_header(f)
    except CheckpointError:
        return
    layout.detect(header.tensors)  # whatever passed the reader, the classifier takes
    with open_checkpoint(f) as source:
        assert set(source.tensors) == set(header.tensors)


@pytest.fixture(scope="module")
def a_and_c(tmp_path_factory) -> Path:
    """A and C for the fuzzed B, written once: the plan only reads them."""
    tmp = tmp_path_factory.mktemp("plan")
    write_checkpoint(tmp / "a.safetensors", "sd1", "inpaint", 1)
    write_checkpoint(tmp / "c.safetensors", "sd1", "normal", 3)
    return tmp


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])  # fmt: skip
@given(content=mutated_files())
def test_fuzzed_inputs_to_a_merge_plan_raise_only_merge_or_checkpoint_errors(a_and_c, content):
    tmp = a_and_c
    (tmp / "b.safetensors").write_bytes(content)
    try:
        plan = plan_merge(tmp / "a.safetensors", tmp / "b.safetensors", tmp / "c.safetensors", tmp / "o.safetensors")
    except (CheckpointError, MergeError):
        return
    plan.close()


def _zip_checkpoint() -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"state_dict": {"a": torch.ones(64), "b": torch.arange(8).reshape(2, 4), "c": torch.ones(3, 3).t()},
                "global_step": 7}, buf)  # fmt: skip
    return buf.getvalue()


_ZIP = _zip_checkpoint()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])  # fmt: skip
@given(flips=st.lists(st.tuples(st.integers(0, len(_ZIP) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(_ZIP))))  # fmt: skip
def test_a_fuzzed_zip_checkpoint_is_one_clear_error_or_reads_inside_the_file(tmp_path, flips, cut):
    raw = bytearray(_ZIP)
    for at, value in flips:
        raw[at] = value
    f = tmp_path / "fuzz.ckpt"
    f.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    try:
        source = open_checkpoint(f)
    except CheckpointError:
        return
    with source:
        size = f.stat().st_size
        for name in source.tensors:
            for _mapping, start, end in source.segments(name) or []:
                assert 0 <= start <= end <= size, name
