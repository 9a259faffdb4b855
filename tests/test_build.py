"""`build` end to end: a model name in, a verified checkpoint out, through a fake Civitai (download endpoint and
signed storage) and a fake Hub serving tiny real-layout checkpoints as the official A and C."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

from advisor.advice.lookup import lookup
from advisor.build import BuildError, build
from advisor.build.download import CHUNK
from crawler import registry
from tests.build_world import sd1_world
from tests.conftest import ROOT, cli_env, option, run_cli
from tests.sd_layouts import write_checkpoint
from tests.storage_fake import Blob


@pytest.fixture
def world(tmp_path, monkeypatch, registry_db):
    with sd1_world(tmp_path, monkeypatch, registry_db) as w:
        yield w


def test_a_fine_tune_without_a_release_is_built_verified_recorded_and_found(world):
    out = world["tmp"] / "out"
    result = build("civitai:600001", out=out, db=world["db"])
    assert result.action == "built" and result.verified, result
    vid = result.match.version_id.rsplit(":v", 1)[1]  # the version's id in the name: no stranger can take it
    target = out / f"tinyModel600001_{result.match.version_name}-inpainting.v{vid}.safetensors"
    assert result.output.path == str(target.resolve()) and target.exists()
    assert result.output.sha256 == hashlib.sha256(target.read_bytes()).hexdigest().upper()
    assert {r: i.verified for r, i in result.inputs.items()} == {"A": True, "B": True, "C": True}
    # A, B and C went to the cache; beside the output only its hidden lock
    assert sorted(p.name for p in out.iterdir()) == [f".{target.name}.lock", target.name]
    with safe_open(str(target), "pt") as f:
        recipe = json.loads(f.metadata()["inpaint_advisor.recipe"])
    assert recipe["sources"]["model"]["id"] == "civitai:600001"
    assert recipe["sources"]["B"]["sha256"] == hashlib.sha256(world["b"]).hexdigest().upper()
    # lookup now answers with the build, first
    answer = lookup("civitai:600001", db=world["db"], offline=True)
    assert answer.recommendation.kind == "built" and answer.recommendation.target.file == str(target.resolve())
    # the same build again does no work: nothing fetched, nothing written
    requests = len(world["storage"].requests)
    again = build("civitai:600001", out=out, db=world["db"])
    assert again.action == "already-built" and again.downloads == [] and len(world["storage"].requests) == requests
    # status lists it
    status = json.loads(run_cli("status", "--json", env=cli_env(INPAINT_ADVISOR_DB=world["db"])).stdout)
    assert [b["path"] for b in status["builds"]] == [str(target.resolve())]
    (listed,) = status["builds"]
    assert listed["model_id"] == "civitai:600001" and listed["version_id"] == result.match.version_id
    assert listed["b_sha256"] == hashlib.sha256(world["b"]).hexdigest().upper()
    # another version of the model is not answered "built": that build is named as an alternative
    reader = registry.open_reader_if_any(world["db"])
    other = next(v.id for v in reader.versions("civitai:600001") if v.id != result.match.version_id)
    reader.close()
    answer = lookup(f"civitai:600001@{other.rsplit(':v', 1)[1]}", db=world["db"], offline=True)
    assert answer.recommendation.kind != "built"
    assert any(a.kind == "built" and "another version" in a.reason for a in answer.alternatives)


def test_a_release_made_for_the_version_is_downloaded_instead(world):
    out = world["tmp"] / "out"
    result = build("civitai:600002", out=out, db=world["db"])
    assert result.action == "downloaded-release" and result.verified
    assert (out / "tinyRelease-inpainting.safetensors").exists()
    forced = build("civitai:600002", out=out, db=world["db"], force_build=True)
    assert forced.action == "built"


def test_a_second_fine_tune_of_the_family_reuses_a_and_c(world):
    out = world["tmp"] / "out"
    build("civitai:600001", out=out, db=world["db"])
    hub_files = [r for r in world["hub"].requests if "/resolve/" in r]
    second = build("civitai:600002", out=out, db=world["db"], force_build=True)
    assert second.action == "built"
    assert [r for r in world["hub"].requests if "/resolve/" in r] == hub_files  # A and C came from the cache
    assert {d.reused for d in second.downloads if "/resolve/" in d.url} <= {True}


def test_a_build_writes_its_output_only_unless_asked_to_prepare_the_pair(world):
    """The pair's fp32 delta is twice an fp16 output's bytes: a build writes it only when asked to."""
    from safetensors.torch import load_file

    from merge import prepared
    from merge.engine import merge

    first = build("civitai:600001", out=world["tmp"] / "out", db=world["db"])
    assert first.action == "built" and first.verified and first.pair is None
    assert prepared.find(first.inputs["A"].sha256, first.inputs["C"].sha256, 1.0) is None
    assert not [p for p in (world["tmp"] / "cache").rglob("*") if p.name == prepared.DELTA_FILE]
    three = world["tmp"] / "three.safetensors"  # it is the three-input merge, bit for bit
    merge(*(first.inputs[r].path for r in "ABC"), three)
    x, y = load_file(three), load_file(first.output.path)
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_the_family_pair_is_prepared_once_and_later_builds_read_it_not_a_and_c(world):
    from safetensors.torch import load_file

    from merge import engine as merge_engine
    from merge import prepared
    from merge.engine import merge

    out = world["tmp"] / "out"
    merges, real = [], merge_engine.run_merge
    with pytest.MonkeyPatch.context() as patch:  # the first build prepares the pair in its own pass
        patch.setattr(merge_engine, "run_merge", lambda plan, **k: merges.append(plan) or real(plan, **k))
        patch.setattr(prepared, "prepare", lambda *a, **k: pytest.fail("prepared in a pass of its own"))
        first = build("civitai:600001", out=out, db=world["db"], prepare_pair=True)
    assert first.pair is not None and first.pair.prepared_now and len(merges) == 1
    pair = prepared.find(first.inputs["A"].sha256, first.inputs["C"].sha256, 1.0)
    assert pair is not None and prepared.check(pair) is None and first.pair.path == str(pair.delta)
    a, c = (first.inputs[r].path for r in "AC")
    os.rename(a, a + ".moved")  # a later build must not need A or C
    os.rename(c, c + ".moved")
    hub_files = [r for r in world["hub"].requests if "/resolve/" in r]
    try:
        second = build("civitai:600002", out=out, db=world["db"], force_build=True)
    finally:
        os.rename(a + ".moved", a)
        os.rename(c + ".moved", c)
    assert second.action == "built" and second.pair.key == first.pair.key and not second.pair.prepared_now
    assert [r for r in world["hub"].requests if "/resolve/" in r] == hub_files  # nor fetched again
    assert second.inputs["A"].source == f"prepared:{first.pair.key}" and second.verified
    three = world["tmp"] / "three.safetensors"
    merge(a, second.inputs["B"].path, c, three)
    x, y = load_file(three), load_file(second.output.path)
    assert set(x) == set(y) and all(torch.allclose(x[k].float(), y[k].float(), rtol=2**-10, atol=0) for k in x)
    listed = json.loads(run_cli("cache", "list", "--json", env=cli_env(
        INPAINT_ADVISOR_CACHE=str(world["tmp"] / "cache"))).stdout)  # fmt: skip
    assert [p["key"] for p in listed["prepared"]] == [first.pair.key]


def test_dry_run_shows_the_plan_and_fetches_nothing(world):
    result = build("civitai:600001", out=world["tmp"] / "out", db=world["db"], dry_run=True)
    assert result.action == "planned" and [p.role for p in result.plan] == ["A", "B", "C"]
    assert {p.state for p in result.plan} == {"missing"} and result.disk_needed > 0
    vid = result.match.version_id.rsplit(":v", 1)[1]
    assert option(result.merge, "--out").endswith(f"tinyModel600001_{result.match.version_name}-inpainting.v{vid}"
                                                  ".safetensors")  # fmt: skip
    assert world["storage"].requests == [] and not (world["tmp"] / "out").exists()


def test_a_family_without_a_build_route_says_so(world):
    with pytest.raises(BuildError, match="no build route for Tiny Model 600003") as refused:
        build("civitai:600003", out=world["tmp"] / "out", db=world["db"])
    assert refused.value.code == "no-build-route"
    with pytest.raises(BuildError, match="nothing to build") as nothing:
        build("nosuchmodelanywhere", out=world["tmp"] / "out", db=world["db"], offline=True)
    assert nothing.value.code == "not-found"


def test_the_cli_builds_from_local_files_with_json(tmp_path):
    paths = {}
    for role, variant, seed in (("a", "inpaint", 1), ("b", "normal", 2), ("c", "normal", 3)):
        paths[role] = tmp_path / f"{role}.safetensors"
        write_checkpoint(paths[role], "sd1", variant, seed)
    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "r.db"), INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    result = run_cli("build", str(paths["b"]), "-a", str(paths["a"]), "-c", str(paths["c"]), "--out",
                     str(tmp_path / "out"), "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["action"] == "built" and data["verified"] is True
    assert set(data) >= {"query", "action", "match", "output", "inputs", "downloads", "warnings"}
    assert data["output"]["path"].endswith("b-inpainting.safetensors") and data["inputs"]["B"]["source"] == "local"
    assert data["pair"] is None  # a plain build writes its output only
    assert f"A = {paths['a']} (yours)" in data["reason"] and "official" not in data["reason"]  # not the advice's
    assert not [w for w in data["warnings"] if "official inpainting model" in w]  # nor the official pair's caveat
    paired = run_cli("build", str(paths["b"]), "-a", str(paths["a"]), "-c", str(paths["c"]), "--out",
                     str(tmp_path / "paired"), "--dtype", "bf16", "--prepare-pair", "--json", env=env)  # fmt: skip
    assert paired.returncode == 0, paired.stderr
    assert json.loads(paired.stdout)["action"] == "built" and json.loads(paired.stdout)["pair"]["prepared_now"]
    human = run_cli("build", str(paths["b"]), "-a", str(paths["a"]), "-c", str(paths["c"]), "--out",
                    str(tmp_path / "out2"), "--dtype", "fp32", "--dry-run", env=env)  # another recipe: a plan
    assert human.returncode == 0 and "plan" in human.stdout and "merge:" in human.stdout


def test_with_the_users_own_a_the_official_models_caveat_is_not_given(tmp_path):
    for role, variant, seed in (("a", "inpaint", 1), ("b", "normal", 2), ("c", "normal", 3)):
        write_checkpoint(tmp_path / f"{role}.safetensors", "sd1", variant, seed)
    kw = dict(out=tmp_path / "out", db=str(tmp_path / "r.db"), offline=True, dry_run=True)
    official_a = build(str(tmp_path / "b.safetensors"), base=str(tmp_path / "c.safetensors"), **kw)
    own_a = build(str(tmp_path / "b.safetensors"), inpaint=str(tmp_path / "a.safetensors"), **kw)
    caveat = "The official inpainting model was resumed from SD 1.2"  # sd1's, about its official A
    assert any(caveat in w for w in official_a.warnings) and "A = " in official_a.reason
    assert not any(caveat in w for w in own_a.warnings) and "(yours)" in own_a.reason and "(official)" in own_a.reason


BUILD = """
import sys
from advisor.build import build
r = build(sys.argv[1], out=sys.argv[2], db=sys.argv[3], inpaint=sys.argv[4], base=sys.argv[5])
print(r.action, [(d.resumed, d.bytes) for d in r.downloads if "blob" in d.path or "civitai" in d.path])
"""


def test_a_build_killed_during_its_download_finishes_when_run_again(world):
    storage = world["storage"]
    version = lookup("civitai:600001", db=world["db"], offline=True).match.version_id  # the B a build takes
    blob = storage.blobs[version.split(":v")[1]]
    blob.hold_after = len(blob.data) // 2
    env = cli_env(INPAINT_ADVISOR_DB=world["db"], INPAINT_ADVISOR_CACHE=os.environ["INPAINT_ADVISOR_CACHE"],
                  HF_ENDPOINT=os.environ["HF_ENDPOINT"], HF_HUB_CACHE=os.environ["HF_HUB_CACHE"],
                  INPAINT_ADVISOR_CIVITAI_URL=os.environ["INPAINT_ADVISOR_CIVITAI_URL"])  # fmt: skip
    out = world["tmp"] / "out"
    made = world["tmp"] / "made"
    # the bundled data's officials are patched in this process only: the child builds with local A and C
    args = [sys.executable, "-c", BUILD, "civitai:600001", str(out), world["db"], str(made / "a.safetensors"),
            str(made / "c.safetensors")]
    child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert storage.holding.wait(60), child.communicate(timeout=5)
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        storage.release.set()
    assert not out.exists() or [p.name for p in out.iterdir() if not p.name.endswith(".lock")] == []
    again = build("civitai:600001", out=out, db=world["db"])
    assert again.action == "built" and again.verified
    b = next(d for d in again.downloads if "tinyModel600001_" in d.path)
    missing = len(blob.data) - len(blob.data) // 2
    assert b.resumed and missing <= b.bytes <= missing + CHUNK  # at most one chunk was in memory, not on disk


def test_a_local_inpainting_model_is_already_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_checkpoint(tmp_path / "inp.safetensors", "sd1", "inpaint", 1)
    result = build("~/inp.safetensors", out=tmp_path / "out", db=str(tmp_path / "r.db"), offline=True)
    assert result.action == "already-inpainting" and result.verified
    assert result.output.path == str((tmp_path / "inp.safetensors").resolve())


def test_a_model_the_pair_cannot_serve_is_merged_from_a_b_and_c(world, monkeypatch):
    from merge import prepared

    out = world["tmp"] / "out"
    build("civitai:600001", out=out, db=world["db"], prepare_pair=True)
    monkeypatch.setattr(prepared, "unusable_with", lambda pair, model: "B has no model.diffusion_model.out.2.weight")
    second = build("civitai:600002", out=out, db=world["db"], force_build=True)
    assert second.action == "built" and second.pair is None and second.verified
    assert any("cannot be built from the prepared pair" in w for w in second.warnings)
    assert second.inputs["A"].path.endswith("sd-v1-5-inpainting.safetensors")


def test_a_first_build_the_pair_cannot_serve_prepares_it_and_merges_from_a_b_and_c(world, monkeypatch):
    from merge import prepared

    real = prepared._unusable
    monkeypatch.setattr(prepared, "_unusable", lambda deltas, model: "B has no x" if model.path.name.startswith(
        "tinyModel") else real(deltas, model))  # fmt: skip
    first = build("civitai:600001", out=world["tmp"] / "out", db=world["db"], prepare_pair=True)
    assert first.action == "built" and first.pair is None and first.verified
    assert first.inputs["A"].path.endswith("sd-v1-5-inpainting.safetensors")
    assert prepared.find(first.inputs["A"].sha256, first.inputs["C"].sha256, 1.0) is not None  # for the next ones


def test_build_missing_builds_the_most_downloaded_models_without_a_release(world):
    from advisor.build import batch

    reg = registry.open(world["db"])
    from sqlalchemy import text

    with reg.engine.begin() as conn:
        conn.execute(text("UPDATE model SET downloads = 50000 WHERE id = 'civitai:600001'"))
    assert batch.missing(world["db"]) == ["civitai:600001"]  # 600002 has a release, 600003 (FLUX) no build route
    assert batch.missing(world["db"], min_downloads=60000) == []
    assert batch.missing(world["db"], family="sdxl") == []
    out = world["tmp"] / "batch"
    first = batch.run_batch(batch.missing(world["db"]), db=world["db"], out=out)
    assert [(i.path, i.status, i.action) for i in first.items] == [("civitai:600001", "done", "built")]
    assert first.disk_needed > 0 and len(list(out.glob("*-inpainting.v*.safetensors"))) == 1
    again = batch.run_batch(batch.missing(world["db"]), db=world["db"], out=out)  # resumable: nothing redone
    assert [(i.status, i.action) for i in again.items] == [("skipped", "already-built")]
    made = world["tmp"] / "made"  # the official pair is patched in this process only: the child gets A and C
    result = run_cli("build", "--missing", "--limit", "1", "--out", str(out), "-a", str(made / "a.safetensors"), "-c",
                     str(made / "c.safetensors"), "--json", env=cli_env(INPAINT_ADVISOR_DB=world["db"]))  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["items"][0]["path"] == "civitai:600001" and summary["skipped"] == 1, summary  # the same recipe


def test_on_a_fresh_machine_build_finds_the_model_live_and_makes_the_registry(world):
    """No crawl, no registry: `build civitai:ID` looks the model up live, creates the registry, stores what
    it learned, plans (dry run: no file fetched) and builds."""
    import contextlib

    from tests import pg

    with contextlib.ExitStack() as stack:
        fresh = (str(world["tmp"] / "fresh" / "registry.db") if "://" not in world["db"]
                 else stack.enter_context(pg.fresh_database()))  # fmt: skip
        out = world["tmp"] / "fresh-out"
        planned = build("civitai:600001", out=out, db=fresh, dry_run=True)
        assert planned.action == "planned" and [p.role for p in planned.plan] == ["A", "B", "C"]
        assert world["storage"].requests == [] and not out.exists()
        reader = registry.open_reader_if_any(fresh)
        assert reader is not None and reader.model("civitai:600001") is not None  # stored from the live answer
        reader.close()
        built = build("civitai:600001", out=out, db=fresh)
        assert built.action == "built" and built.verified and built.output is not None


def test_a_plan_says_everything_before_a_byte_is_fetched_and_running_it_builds_that(world):
    """plan_build settles the inputs (source, size, hash, cache state), the recipe key, the output and the disk
    it needs, fetching nothing; run_build does exactly that plan."""
    from advisor.build import plan_build, run_build

    out = world["tmp"] / "out"
    requests = len(world["storage"].requests)
    plan = plan_build("civitai:600001", out=out, db=world["db"])
    planned = plan.result
    assert planned.action == "planned" and len(world["storage"].requests) == requests and not out.exists()
    assert [i.role for i in planned.plan] == ["A", "B", "C"] and all(i.state == "missing" for i in planned.plan)
    assert planned.plan[1].sha256 == hashlib.sha256(world["b"]).hexdigest().upper()
    assert planned.recipe_key and planned.disk_needed > len(world["b"])
    assert option(planned.merge, "--out") == str(plan.merge.target)
    done = run_build(plan)
    assert done.action == "built" and done.verified and done.recipe_key == planned.recipe_key
    assert done.output.path == str(plan.merge.target.resolve())


def test_the_download_pins_the_recorded_file_whatever_the_keys_preferences_pick(world):
    """Without ?fileId= Civitai serves the primary file by the API key owner's preferences (StabilityMatrix#1710):
    here another file of the version, whose bytes the recorded SHA256 would refuse. The build asks for the file
    whose hash the registry holds, and gets it."""
    fake, storage = world["civitai"], world["storage"]
    reader = registry.open_reader_if_any(world["db"])
    version = reader.versions("civitai:600001")[0]
    reader.close()
    vid, fid = version.id.rsplit(":v", 1)[1], version.primary_file_id.rsplit(":f", 1)[1]
    preferred = b"another file of the version: pruned, fp32, whatever the key prefers" * 1000
    storage.blobs["preferred"] = Blob(preferred, "tinyModel600001_pruned.safetensors")
    pinned = fake.downloads[vid]
    fake.downloads[vid] = (f"{pinned[0].rsplit('/blob/', 1)[0]}/blob/preferred?sig=1", False)
    fake.downloads[f"{vid}?fileId={fid}"] = pinned
    result = build(f"civitai:600001@{vid}", out=world["tmp"] / "out", db=world["db"])
    assert result.action == "built" and result.inputs["B"].verified, result
    asked = [r["query"].get("fileId") for r in fake.requests if r["path"] == f"/api/download/models/{vid}"]
    assert asked == [[fid]]


def test_a_planned_build_names_the_real_files_its_merge_reads(world):
    plan = build("civitai:600001", out=world["tmp"] / "out", db=world["db"], dry_run=True)
    argv = plan.merge.argv
    paths = {flag: argv[argv.index(flag) + 1] for flag in ("--inpaint", "--model", "--base")}
    assert paths["--inpaint"].endswith("sd-v1-5-inpainting.safetensors")
    assert paths["--base"].endswith("v1-5-pruned-emaonly.safetensors")
    assert paths["--model"].endswith(".safetensors") and "tinyModel600001" in paths["--model"]
    assert not {"A", "B", "C"} & set(argv)


def test_a_finished_build_names_the_files_as_fetched(world):
    """A server names its download (Content-Disposition): the merge's argv names the file that was read."""
    result = build("civitai:600001", out=world["tmp"] / "out", db=world["db"])
    argv = result.merge.argv
    assert argv[argv.index("--model") + 1] == result.inputs["B"].path


def test_a_dry_run_says_the_multiplier_it_was_asked(tmp_path):
    write_checkpoint(tmp_path / "mine.safetensors", "sd1", "normal", 6)
    plan = build(str(tmp_path / "mine.safetensors"), out=tmp_path / "out", db=str(tmp_path / "r.db"), offline=True,
                 multiplier=0.5, dry_run=True)  # fmt: skip
    assert "M = 0.5" in plan.reason and "M = 1.0" not in plan.reason


def test_a_batch_does_not_fetch_again_for_the_next_model_what_failed_for_the_last(world, monkeypatch):
    from advisor.build import batch, builder

    asked = []

    def unreachable(source, folder, **kw):
        asked.append(source.url)
        raise builder.DownloadError(f"{source.label}: cannot reach the Hub (after 8 attempts)", "network")

    monkeypatch.setattr(builder, "fetch", unreachable)
    made = world["tmp"] / "made"
    done = batch.run_batch([str(made / "b.safetensors"), str(made / "b2.safetensors")], db=world["db"],
                           out=world["tmp"] / "out")  # fmt: skip
    assert [i.status for i in done.items] == ["failed", "failed"]
    assert len(asked) == len(set(asked)) == 1, asked  # A, once: the second model is told at once
    assert "not tried again: it failed for an earlier model of this batch" in done.items[1].reason
    assert "cannot reach the Hub" in done.items[1].reason
    again = batch.run_batch([str(made / "b.safetensors")], db=world["db"], out=world["tmp"] / "out")
    assert len(asked) == 2 and "not tried again" not in again.items[0].reason  # a new batch tries again
