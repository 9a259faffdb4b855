"""kill -9 at every step of a build, then the same command: it finishes, with a file that is the recipe's merge,
its record matching it, and nothing half-made left behind.

The build runs in a forked child (this process's imports, warm) that SIGKILLs itself at the chosen step: with
the output's lock held, mid-way through preparing the family's pair, after the pair's delta is named but before
its record, mid-merge, with the merge complete but not yet renamed, between the rename and the registry record,
and right after the record. The download step is killed in tests/test_build.py (a child held by the server)."""

import os
import signal

import pytest
import torch
from safetensors import safe_open

from advisor.build import build
from advisor.build import builder as build_module
from crawler import registry
from crawler.registry import artifacts
from merge import hashing
from tests.sd_layouts import write_checkpoint

STEPS = ["locked", "preparing-pair", "pair-unrecorded", "merging", "merged", "renamed", "recorded"]
# a default build merges A, B and C; one asked to prepare the family's pair has two more steps to be killed at
CASES = [(step, False) for step in STEPS if "pair" not in step] + [(step, True) for step in STEPS]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    paths = {"a": folder / "a.safetensors", "b": folder / "myModel.safetensors", "c": folder / "c.safetensors"}
    for (role, path), variant in zip(paths.items(), ("inpaint", "normal", "normal"), strict=True):
        write_checkpoint(path, "sd1", variant, {"a": 1, "b": 2, "c": 3}[role])
    return {k: str(v) for k, v in paths.items()}


def _kill_at(step: str) -> None:
    """In the child: SIGKILL this process when the build reaches ``step``."""
    from merge import prepared
    from merge.safetensors_io import SafetensorsWriter

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "locked":
        build_module._run_merge = lambda *a, **k: die()
    elif step in ("preparing-pair", "merging"):
        real_done, seen = SafetensorsWriter.done, [0]

        def done(self, name):
            real_done(self, name)
            in_pair = self.path.name == prepared.DELTA_FILE
            if in_pair == (step == "preparing-pair"):
                seen[0] += 1
                if seen[0] == 5:
                    die()

        SafetensorsWriter.done = done
    elif step == "pair-unrecorded":
        real_json = prepared._write_json
        prepared._write_json = lambda target, record: die() if target.name == prepared.PAIR_FILE else \
            real_json(target, record)
    elif step == "merged":  # the output whole, not yet under its name
        from merge import portable

        real_rename = portable.rename_no_replace
        portable.rename_no_replace = lambda src, dst: die() if ".build-" in str(src) else real_rename(src, dst)
    elif step == "renamed":
        artifacts.record = lambda *a, **k: die()
    elif step == "recorded":
        real_record = artifacts.record

        def record(*args, **kwargs):
            real_record(*args, **kwargs)
            die()

        artifacts.record = record


def _build(inputs, out, db, prepare_pair=False):
    return build(inputs["b"], inpaint=inputs["a"], base=inputs["c"], out=out, db=db, offline=True,
                 prepare_pair=prepare_pair)  # fmt: skip


def _killed_build(inputs, out, db, step: str, prepare_pair: bool) -> None:
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            _kill_at(step)
            _build(inputs, out, db, prepare_pair)
        finally:
            os._exit(3)  # the step was never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{step}: not killed ({status})"


def _tensors(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The same build, never killed (each way): what every killed build must end up as."""
    made = {}
    for prepare_pair in (False, True):
        folder = tmp_path_factory.mktemp("reference")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("INPAINT_ADVISOR_CACHE", str(folder / "cache"))
            result = _build(inputs, folder / "out", str(folder / "registry.db"), prepare_pair)
        assert (result.pair is not None) == prepare_pair
        made[prepare_pair] = result, _tensors(result.output.path)
    return made


@pytest.mark.parametrize(("step", "prepare_pair"), CASES)
def test_a_build_killed_at_any_step_is_finished_by_the_same_command(inputs, reference, tmp_path, monkeypatch, step,
                                                                    prepare_pair):  # fmt: skip
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    out, db = tmp_path / "out", str(tmp_path / "registry.db")
    registry.open(db)
    _killed_build(inputs, out, db, step, prepare_pair)

    result = _build(inputs, out, db, prepare_pair)  # the same command
    expected, tensors = reference[prepare_pair]
    target = out / expected.output.path.rsplit("/", 1)[1]
    assert result.action in ("built", "already-built") and result.verified
    assert result.output.path == str(target.resolve())
    assert result.output.sha256 == hashing.file_hashes(target, use_cache=False, autov3=False).sha256
    made = _tensors(target)
    assert made.keys() == tensors.keys() and all(torch.equal(made[k], tensors[k]) for k in tensors)
    rows = registry.open(db).artifact_by_key(_recipe_key(target))
    assert rows is not None and rows.sha256 == result.output.sha256
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == [target.name]
    cache = tmp_path / "cache"
    assert not [p for p in cache.rglob("*") if ".partial-" in p.name or ".build-" in p.name]


def _recipe_key(path) -> str:
    import json

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["inpaint_advisor.recipe"])["sources"]["recipe_key"]


def test_a_file_that_takes_the_outputs_name_while_the_build_runs_is_left_as_it_is(inputs, tmp_path, monkeypatch):
    """The output's lock keeps out builds, not a `merge --out` or a copy: the name is taken only where free."""
    from merge import portable

    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    real_rename = portable.rename_no_replace

    def taken_first(src, dst):
        if ".build-" in src.name and ".build-" not in dst.name:  # the output, as it is named (not the merge's)
            dst.write_bytes(b"someone else's file")
        return real_rename(src, dst)

    monkeypatch.setattr(portable, "rename_no_replace", taken_first)
    with pytest.raises(build_module.BuildError, match="another file took the name while this build ran") as failed:
        _build(inputs, tmp_path / "out", str(tmp_path / "r.db"))
    assert failed.value.code == "exists"
    (taken,) = (tmp_path / "out").glob("*.safetensors")
    assert taken.read_bytes() == b"someone else's file" and not list((tmp_path / "out").glob(".*build-*"))


def test_a_name_is_taken_only_where_free_with_or_without_hard_links(tmp_path, monkeypatch):
    from merge import portable

    for links in (True, False):
        src, dst = tmp_path / f"src-{links}", tmp_path / f"dst-{links}"
        if not links:
            monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(1, "no links")))
        src.write_bytes(b"new")
        portable.rename_no_replace(src, dst)
        assert dst.read_bytes() == b"new" and not src.exists()
        src.write_bytes(b"newer")
        with pytest.raises(FileExistsError):
            portable.rename_no_replace(src, dst)
        assert dst.read_bytes() == b"new" and src.read_bytes() == b"newer"
    monkeypatch.undo()
    src, dst = tmp_path / "stuck", tmp_path / "named"
    src.write_bytes(b"whole")
    monkeypatch.setattr(os, "unlink", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "held open")))
    portable.rename_no_replace(src, dst)  # the file has its name: a source left behind is no failure
    monkeypatch.undo()
    assert dst.read_bytes() == b"whole"
