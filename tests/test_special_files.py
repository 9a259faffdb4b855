"""Only regular files are opened as checkpoints: a FIFO (or a link to one), a device or a socket named
``x.safetensors`` is refused at once with one line by every reader and every command, never opened (an open of
a FIFO blocks until a writer comes: forever), and a file that changes while it is hashed is an error."""

import json
import os
import socket
from pathlib import Path

import pytest

from merge import hashing, zip_pickle
from merge.checkpoint import DiffusersSource, SafetensorsSource, open_checkpoint, read_config
from merge.header import CheckpointError, read_header, regular_file
from tests.conftest import cli_env, run_cli
from tests.sd_layouts import write_checkpoint
from tests.special_files import fifo_and_link, released_after

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
SECONDS = 20  # a command that hangs on a FIFO never returns: this is "at once" with room for a busy machine


@pytest.fixture
def special(tmp_path) -> dict[str, Path]:
    fifo, link = fifo_and_link(tmp_path / "specials")
    return {"FIFO": fifo, "symlink to a FIFO": link, "character device": Path(os.devnull)}


WHAT = {"FIFO": "a FIFO, not a regular file", "symlink to a FIFO": "a symlink to a FIFO, not a regular file",
        "character device": "a character device, not a regular file"}  # fmt: skip
KINDS = list(WHAT)


def _one_line_naming(result, path: Path, kind: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(path) in lines[0] or path.name in lines[0], lines[0]
    assert WHAT[kind] in lines[0], lines[0]


# -- the readers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_refuses_what_is_not_a_regular_file_at_once(special, kind):
    path = special[kind]
    readers = {
        "regular_file": regular_file,
        "read_header": read_header,
        "open_checkpoint": open_checkpoint,
        "SafetensorsSource": SafetensorsSource,
        "zip_pickle.parse": zip_pickle.parse,
        "file_hashes": lambda p: hashing.file_hashes(p, autov3=False, use_cache=False),
        "file_hashes (AutoV3)": lambda p: hashing.file_hashes(p, use_cache=False),
        "read_config": read_config,
    }
    with released_after(SECONDS, special["FIFO"]) as released:
        for name, read in readers.items():
            with pytest.raises(CheckpointError, match=WHAT[kind]):
                read(path)
            assert not released, f"{name} blocked on the FIFO"


def test_a_socket_and_a_folder_are_named_too(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s.safetensors"))
        with pytest.raises(CheckpointError, match="s.safetensors: a socket, not a regular file"):
            open_checkpoint(tmp_path / "s.safetensors")
    finally:
        sock.close()
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="a folder"):
        read_header(tmp_path / "d.safetensors")
    assert regular_file(tmp_path / "d.safetensors", folder=True).st_mode  # where a diffusers folder may be


def test_a_diffusers_folder_with_a_fifo_inside_is_refused_not_waited_on(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    os.mkfifo(folder / "unet" / "diffusion_pytorch_model.safetensors")
    os.mkfifo(folder / "unet" / "config.json")
    fifos = [folder / "unet" / "diffusion_pytorch_model.safetensors", folder / "unet" / "config.json"]
    with released_after(SECONDS, *fifos) as released:
        with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors: a FIFO"):
            DiffusersSource(folder)
        with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors: a FIFO"):
            hashing.folder_identity(folder)
        with pytest.raises(CheckpointError, match="config.json: a FIFO"):
            read_config(folder / "unet" / "config.json")
        result = run_cli("probe", str(folder), timeout=SECONDS)
    assert not released
    assert result.returncode == 1 and "config.json: a FIFO, not a regular file" in result.stderr


def test_a_file_that_changes_while_it_is_hashed_is_an_error_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "growing.safetensors"
    f.write_bytes(os.urandom(2**20))

    def appending_once():
        appended = []

        def append(_n):  # another program still writing it (once: a file growing forever is never hashed)
            if not appended:
                appended.append(1)
                with open(f, "ab") as out:
                    out.write(b"more")

        return append

    for autov3 in (False, True):
        with pytest.raises(CheckpointError, match="growing.safetensors: changed while it was hashed"):
            hashing.file_hashes(f, autov3=autov3, progress=appending_once())
    assert hashing.cached(f, autov3=False) is None
    steady = hashing.file_hashes(f, autov3=False)  # left alone: hashed, and cached
    assert hashing.cached(f, autov3=False) == steady


# -- every command -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def a_and_c(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ac")
    write_checkpoint(tmp / "a.safetensors", "sd1", "inpaint", 1)
    write_checkpoint(tmp / "c.safetensors", "sd1", "normal", 3)
    return tmp / "a.safetensors", tmp / "c.safetensors"


def _env(tmp_path) -> dict:
    return cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"), INPAINT_ADVISOR_DB=str(tmp_path / "registry.db"))


@pytest.mark.parametrize("kind", KINDS)
def test_probe_and_lookup_refuse_it_with_one_line(tmp_path, special, kind):
    path = special[kind]
    with released_after(SECONDS, special["FIFO"]) as released:
        probed = run_cli("probe", str(path), env=_env(tmp_path), timeout=SECONDS)
        as_json = run_cli("probe", str(path), "--json", env=_env(tmp_path), timeout=SECONDS)
        looked = run_cli("lookup", f"./{path.name}" if path.parent != Path("/dev") else str(path),
                         env=_env(tmp_path), cwd=path.parent, timeout=SECONDS)  # fmt: skip
    assert not released
    _one_line_naming(probed, path, kind)
    assert json.loads(as_json.stdout)["error"]["code"] == "bad-checkpoint"
    _one_line_naming(looked, path, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_merge_refuses_it_as_any_input_and_writes_nothing(tmp_path, special, a_and_c, kind):
    a, c = a_and_c
    path, out = special[kind], tmp_path / "out.safetensors"
    with released_after(SECONDS, special["FIFO"]) as released:
        results = [run_cli("merge", *args, "-o", str(out), env=_env(tmp_path), timeout=SECONDS) for args in (
            ("-a", str(a), "-b", str(path), "-c", str(c)), ("-a", str(path), "-b", str(c), "-c", str(c)),
            ("-a", str(a), "-b", str(c), "-c", str(path)))]  # fmt: skip
    assert not released
    for result in results:
        _one_line_naming(result, path, kind)
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_build_refuses_it_as_b_and_writes_nothing(tmp_path, special, a_and_c, kind):
    a, c = a_and_c
    path, out = special[kind], tmp_path / "built"
    query = f"./{path.name}" if path.parent != Path("/dev") else str(path)
    with released_after(SECONDS, special["FIFO"]) as released:
        result = run_cli("build", query, "-a", str(a), "-c", str(c), "--out", str(out), "--offline",
                         env=_env(tmp_path), cwd=path.parent, timeout=SECONDS)  # fmt: skip
        as_a = run_cli("build", str(c), "-a", str(path), "-c", str(c), "--out", str(out), "--offline",
                       env=_env(tmp_path), timeout=SECONDS)  # fmt: skip
    assert not released
    _one_line_naming(result, path, kind)
    _one_line_naming(as_a, path, kind)
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_scan_sets_special_files_aside_without_opening_them(tmp_path, a_and_c):
    models = tmp_path / "models"
    fifo, link = fifo_and_link(models)
    (models / "null.safetensors").symlink_to(os.devnull)
    write_checkpoint(models / "real.safetensors", "sd1", "normal", 2)
    with released_after(SECONDS, fifo) as released:
        result = run_cli("scan", str(models), "--json", "--offline", env=_env(tmp_path), timeout=SECONDS)
        shown = run_cli("scan", str(models), "--offline", env=_env(tmp_path), timeout=SECONDS)
    assert not released
    assert result.returncode == 0, result.stderr
    scanned = json.loads(result.stdout)
    scanned = scanned[0] if isinstance(scanned, list) else scanned
    aside = {Path(s["path"]).name: s["reason"] for s in scanned["skipped"]}
    assert aside == {"x.safetensors": "a FIFO, not a regular file",
                     "link-x.safetensors": "a symlink to a FIFO, not a regular file",
                     "null.safetensors": "a symlink to a character device, not a regular file"}  # fmt: skip
    assert [Path(c["path"]).name for c in scanned["checkpoints"]] == ["real.safetensors"]
    assert shown.returncode == 0 and "set aside: x.safetensors — a FIFO, not a regular file" in shown.stdout
