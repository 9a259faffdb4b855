"""A build is right or it fails: a kill between its rename and its record, two builds to one output, a file
already under the output's name, NaN/Inf the inputs do not hold, a stranger's file named like a popular model's.
Local A, B and C (no servers): what is tested is the build's own bookkeeping."""

import json
import threading

import pytest
import torch
from safetensors import safe_open

from advisor.build import BuildError, build
from advisor.build import builder as build_module
from crawler import registry
from crawler.registry import artifacts
from merge import hashing
from tests.sd_layouts import write_checkpoint


@pytest.fixture
def files(tmp_path):
    a, b, c = tmp_path / "a.safetensors", tmp_path / "myModel.safetensors", tmp_path / "c.safetensors"
    write_checkpoint(a, "sd1", "inpaint", 1)
    write_checkpoint(b, "sd1", "normal", 2)
    write_checkpoint(c, "sd1", "normal", 3)
    out = tmp_path / "out"
    return {"a": str(a), "b": str(b), "c": str(c), "out": out, "target": out / "myModel-inpainting.safetensors"}


def _build(f, **kw):
    return build(f["b"], inpaint=f["a"], base=f["c"], out=f["out"], offline=True, **kw)


def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _hidden_outputs(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_a_build_killed_between_its_rename_and_its_record_is_adopted_by_the_same_command(files, tmp_path,
                                                                                        monkeypatch):
    db = str(tmp_path / "registry.db")
    registry.open(db)  # a registry to record in
    real = artifacts.record

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies here: the file has its final name, the record is not written

    monkeypatch.setattr(artifacts, "record", killed)
    with pytest.raises(KeyboardInterrupt):
        _build(files, db=db)
    target = files["target"]
    assert target.exists() and not _hidden_outputs(files["out"])  # complete, under its name, nothing else
    monkeypatch.setattr(artifacts, "record", real)
    again = _build(files, db=db)  # the same command finishes: it adopts the file and records it
    assert again.action == "already-built" and again.output.path == str(target.resolve())
    assert registry.open(db).artifact_by_key(_recipe_key_of(target)) is not None
    third = _build(files, db=db)  # and from then on the record answers
    assert third.action == "already-built" and "Built before" in third.reason


def _recipe_key_of(path) -> str:
    import json

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["inpaint_advisor.recipe"])["sources"]["recipe_key"]


def test_an_output_folder_that_is_a_file_is_one_line_and_a_usage_error(files, tmp_path):
    taken = tmp_path / "not-a-folder"
    taken.write_bytes(b"someone's file")
    with pytest.raises(BuildError) as raised:
        build(files["b"], inpaint=files["a"], base=files["c"], out=taken, offline=True)
    assert raised.value.code == "bad-input" and raised.value.exit_code == 2 and "not a folder" in str(raised.value)
    assert taken.read_bytes() == b"someone's file"


def test_a_file_of_another_kind_under_the_output_name_is_never_overwritten(files):
    files["out"].mkdir()
    files["target"].write_bytes(b"the user's own file")
    with pytest.raises(BuildError, match="not a build of inpaint-advisor") as refused:
        _build(files)
    assert refused.value.code == "exists" and files["target"].read_bytes() == b"the user's own file"


def test_another_recipes_build_under_the_name_is_named_as_such_and_kept(files):
    first = _build(files, dtype="fp32")
    before = files["target"].read_bytes()
    with pytest.raises(BuildError, match="another recipe's build") as refused:
        _build(files, dtype="fp16")
    assert refused.value.code == "exists" and first.action == "built" and files["target"].read_bytes() == before


def test_two_builds_to_one_output_build_once_and_the_record_matches_the_file(files, tmp_path):
    db = str(tmp_path / "registry.db")
    registry.open(db)
    results, errors = [], []

    def run(dtype):
        try:
            results.append(_build(files, db=db, dtype=dtype))
        except BuildError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in ("fp32", "fp16")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.action for r in results] == ["built"] and [e.code for e in errors] == ["exists"]
    with safe_open(str(files["target"]), "pt") as f:
        dtype = f.get_tensor("model.diffusion_model.out.2.weight").dtype
    recorded = [r for r in _rows(db) if r.kind == "built"]
    assert len(recorded) == 1 and recorded[0].dtype == {torch.float32: "fp32", torch.float16: "fp16"}[dtype]
    assert not _hidden_outputs(files["out"])


def _rows(db):
    from sqlmodel import select

    from crawler.registry.schema import Artifact

    with registry.open(db).engine.connect() as conn:
        return list(conn.execute(select(Artifact)).all())


def test_nan_or_inf_the_inputs_do_not_hold_fails_the_build_with_nothing_kept(files):
    name = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    with safe_open(files["b"], "pt") as f:
        shape = f.get_tensor(name).shape
    write_checkpoint(files["b"], "sd1", "normal", 2, extra={name: torch.full(shape, 60000.0, dtype=torch.float16)})
    write_checkpoint(files["c"], "sd1", "normal", 3, extra={name: torch.full(shape, -60000.0, dtype=torch.float16)})
    with pytest.raises(BuildError, match="NaN/Inf in 1 tensors") as refused:  # B - C overflows fp16
        _build(files)
    assert refused.value.code == "nonfinite"
    assert not files["target"].exists() and not _hidden_outputs(files["out"])
    kept = _build(files, allow_nonfinite=True)
    assert kept.action == "built" and kept.nonfinite == 1 and files["target"].exists()
    assert any("NaN/Inf in 1 output tensors, kept as asked" in w for w in kept.warnings)


def test_nan_or_inf_carried_from_an_input_is_a_warning_not_a_failure(files):
    name = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    with safe_open(files["b"], "pt") as f:
        shape = f.get_tensor(name).shape
    write_checkpoint(files["b"], "sd1", "normal", 2, extra={name: torch.full(shape, float("inf"), dtype=torch.float16)})
    result = _build(files)
    assert result.action == "built" and result.nonfinite == 1
    assert any("its inputs hold them too" in w for w in result.warnings)


def test_a_killed_builds_hidden_output_is_removed_by_the_next_build(files):
    files["out"].mkdir()
    stale = files["out"] / ".myModel-inpainting.build-999999999.safetensors"  # a pid that is not running
    stale.write_bytes(b"a build killed after its merge")
    mid_merge = files["out"] / "..myModel-inpainting.build-999999998.safetensors.partial-999999998"
    mid_merge.write_bytes(b"a build killed during its merge (the merge writer's partial)")
    _build(files)
    assert not stale.exists() and not mid_merge.exists() and files["target"].exists()
    assert not _hidden_outputs(files["out"])


def test_a_strangers_file_named_like_a_popular_models_gets_a_name_of_its_own():
    from advisor.advice import Match
    from advisor.build import Source
    from advisor.build.builder import _Need, _output_name

    def named(version_id):
        need = _Need("B", Source("http://x/1", name="popularRealistic_v9.safetensors"), folder=build_module.Path("."))
        match = Match(source="civitai", model_id="civitai:1", version_id=version_id, name="Popular Realistic",
                      creator=None, base_model="SD 1.5", family="sd1", is_inpainting=False)  # fmt: skip
        return _output_name(need, match)

    real, stranger = named("civitai:1:v123"), named("civitai:66:v999")
    assert real == "popularRealistic_v9-inpainting.v123.safetensors" and real != stranger


@pytest.mark.parametrize("query", ["sd15", "v1-5-pruned-emaonly.safetensors", "CompVis/stable-diffusion-v1-4",
                                   "SDXL 1.0"])
def test_a_base_model_given_to_build_is_one_line_and_a_usage_error(query, tmp_path):
    from tests.conftest import cli_env, run_cli

    for as_json in (False, True):
        done = run_cli("build", query, "--out", str(tmp_path / "out"), "--offline", *(["--json"] if as_json else []),
                       env=cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "registry.db")))  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
        if as_json:
            error = json.loads(done.stdout)["error"]
            assert error["code"] == "is-a-base" and "a base model, not a fine-tune" in error["message"]
        else:
            assert "a base model, not a fine-tune" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing built, nothing begun


def test_build_missing_never_selects_an_official_base_repo(registry_db):
    from sqlmodel import Session

    from advisor.build import batch
    from crawler.registry.schema import Model

    reg = registry.open(registry_db)
    with Session(reg.engine) as session:
        for source_id, downloads in (("CompVis/stable-diffusion-v1-4", 10**7), ("Lykon/dreamshaper-8", 10**5)):
            session.add(Model(id=f"hf:{source_id}", source="hf", source_id=source_id, name=source_id,
                              name_norm=source_id.lower(), family="sd1", downloads=downloads))  # fmt: skip
        session.commit()
    assert batch.missing(registry_db) == ["hf:Lykon/dreamshaper-8"]  # the base repo left out


def test_the_same_build_asked_for_another_folder_is_copied_there_checked(files, tmp_path):
    db = str(tmp_path / "registry.db")
    first = _build(files, db=db)
    elsewhere = tmp_path / "comfyui" / "models" / "checkpoints"
    again = build(files["b"], inpaint=files["a"], base=files["c"], out=elsewhere, offline=True, db=db)
    copy = elsewhere / files["target"].name
    assert again.action == "already-built" and again.output.path == str(copy.resolve())
    assert copy.read_bytes() == files["target"].read_bytes() and again.output.sha256 == first.output.sha256
    assert not _hidden_outputs(elsewhere)


def test_the_output_is_hashed_as_it_is_written_not_read_again(files, monkeypatch):
    import hashlib

    def read_again(path):
        raise AssertionError(f"{path} was read again to hash it")

    monkeypatch.setattr(build_module, "_output", read_again)
    result = _build(files)
    assert result.action == "built"
    assert result.output.sha256 == hashlib.sha256(files["target"].read_bytes()).hexdigest().upper()
    assert result.output.size == files["target"].stat().st_size


def test_a_b_changed_after_its_check_fails_the_build_before_the_output_has_a_name(files, monkeypatch):
    """B's hash is in the hash cache (same path, size and mtime): only hashing the bytes the merge reads can
    tell that they changed."""
    import os
    from pathlib import Path

    real = build_module._plan

    def then_tampered(*args, **kwargs):
        plan = real(*args, **kwargs)
        b = Path(files["b"])
        st = b.stat()
        data = bytearray(b.read_bytes())
        data[-1] ^= 0x01
        b.write_bytes(bytes(data))
        os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
        return plan

    monkeypatch.setattr(build_module, "_plan", then_tampered)
    with pytest.raises(BuildError) as err:
        _build(files)
    assert err.value.code == "hash-mismatch" and "changed since it was checked" in str(err.value)
    assert not files["target"].exists() and not _hidden_outputs(files["out"])
    monkeypatch.setattr(build_module, "_plan", real)
    again = _build(files)  # the same command builds the B that is there now: no stale hash keeps failing it
    assert again.action == "built" and again.inputs["B"].sha256 == hashing.file_hashes(
        files["b"], use_cache=False, autov3=False).sha256  # fmt: skip


def test_a_b_rewritten_in_place_with_its_mtime_set_back_is_not_taken_for_the_one_built_before(files, tmp_path):
    import os
    from pathlib import Path

    db = str(tmp_path / "registry.db")
    registry.open(db)
    first = _build(files, db=db)
    b = Path(files["b"])
    st = b.stat()
    data = bytearray(b.read_bytes())
    data[-1] ^= 0x01
    b.write_bytes(bytes(data))
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime tells
    second = _build(dict(files, out=tmp_path / "elsewhere"), db=db)
    assert second.action == "built" and second.inputs["B"].sha256 != first.inputs["B"].sha256
