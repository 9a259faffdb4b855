"""`scan`: A1111 and ComfyUI trees made here (tiny real-layout checkpoints, a LoRA, a VAE, a diffusers folder, a
symlink loop, a truncated file, an extra_model_paths.yaml), paired against a registry that knows their hashes."""

import copy
import datetime
import hashlib
import json
import os
import random

import pytest
import torch
from safetensors.torch import save_file

from advisor.local.scan import checkpoint_folders, scan
from crawler import civitai, registry
from crawler.http import RetryPolicy
from tests.civitai_fake import FakeCivitai, synthetic_item
from tests.conftest import cli_env, run_cli
from tests.diffusers_layout import write_diffusers
from tests.sd_layouts import make_state_dict, vae_shapes, write_checkpoint


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest().upper()


def _lora(path):
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, path)  # fmt: skip


def _vae(path):
    save_file({f"first_stage_model.{k}": v for k, v in make_state_dict(vae_shapes(16), 1).items()}, path)


@pytest.fixture
def a1111(tmp_path, monkeypatch):
    """An A1111 install: two fine-tunes (one renamed, with its inpainting release beside it), a local official
    inpainting model, a diffusers folder, a LoRA and a VAE in the checkpoint folder, a truncated file, a loop."""
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "stable-diffusion-webui"
    sd = root / "models" / "Stable-diffusion"
    (sd / "sub").mkdir(parents=True)
    (root / "webui.py").write_text("")
    (root / "modules").mkdir()
    write_checkpoint(sd / "renamed-by-me.safetensors", "sd1", "normal", 11)
    write_checkpoint(sd / "sub" / "its-inpainting.safetensors", "sd1", "inpaint", 12)
    write_checkpoint(sd / "lonely.safetensors", "sd1", "normal", 13)
    write_diffusers(sd / "diffusers-model", write_checkpoint(tmp_path / "d.safetensors", "sd1", "normal", 14), "sd1")
    _lora(sd / "detail-tweaker.safetensors")
    _vae(sd / "vae-ft-mse.safetensors")
    (sd / "broken.safetensors").write_bytes((sd / "lonely.safetensors").read_bytes()[:5000])
    os.symlink(sd, sd / "sub" / "loop")  # a folder that contains itself
    (sd / ".hidden.partial").write_bytes(b"x")
    return root


@pytest.fixture
def known(a1111, registry_db, serve):
    """A registry that has the renamed fine-tune (by hash) and its inpainting release as another version."""
    sd = a1111 / "models" / "Stable-diffusion"
    item = synthetic_item(620001, random.Random(3), datetime.datetime(2025, 1, 1))
    item["name"], item["modelVersions"] = "Famous Mix", item["modelVersions"][:1]
    v = item["modelVersions"][0]
    v["baseModel"], v["baseModelType"], v["files"] = "SD 1.5", "Standard", v["files"][:1]
    v["files"][0].update(name="famousMix_v1.safetensors", hashes={"SHA256": _sha(sd / "renamed-by-me.safetensors")})
    rel = copy.deepcopy(v)
    rel["id"], rel["name"], rel["baseModelType"] = v["id"] + 1, v["name"] + "-inpainting", "Inpainting"
    rel["files"][0].update(id=rel["files"][0]["id"] + 1, name="famousMix_v1-inpainting.safetensors",
                           hashes={"SHA256": _sha(sd / "sub" / "its-inpainting.safetensors")})  # fmt: skip
    item["modelVersions"].insert(0, rel)
    civitai.crawl(registry.open(registry_db), base_url=serve(FakeCivitai([item])), policy=RetryPolicy(attempts=2))
    return registry_db


def test_an_a1111_install_is_recognised_and_every_file_identified(a1111, known):
    layout, folders = checkpoint_folders(a1111)
    assert layout == "a1111" and folders == [a1111 / "models" / "Stable-diffusion"]
    (r,) = scan([a1111], db=known)
    by_name = {os.path.basename(c.path): c for c in r.checkpoints}
    assert set(by_name) == {"renamed-by-me.safetensors", "its-inpainting.safetensors", "lonely.safetensors",
                            "diffusers-model"}  # once each, though the loop shows the folder again  # fmt: skip
    skipped = {os.path.basename(s.path): s.reason for s in r.skipped}
    assert "LoRA" in skipped["detail-tweaker.safetensors"] and "VAE" in skipped["vae-ft-mse.safetensors"]
    assert "unreadable" in skipped["broken.safetensors"]
    # the renamed fine-tune is found by hash, and its release is already on disk
    mine = by_name["renamed-by-me.safetensors"]
    assert mine.match.name == "Famous Mix"
    assert mine.sha256 == _sha(a1111 / "models" / "Stable-diffusion" / "renamed-by-me.safetensors")
    assert mine.partner.kind == "local" and mine.partner.path.endswith("sub/its-inpainting.safetensors")
    assert by_name["its-inpainting.safetensors"].partner.kind == "already-inpainting"
    assert by_name["lonely.safetensors"].partner.kind == "official"  # unknown to the registry: its family's
    from merge.hashing import folder_identity

    folder = a1111 / "models" / "Stable-diffusion" / "diffusers-model"
    assert by_name["diffusers-model"].family == "sd1" and by_name["diffusers-model"].sha256 == folder_identity(folder)


def test_hashes_are_computed_once_and_not_for_set_aside_files(a1111, known, monkeypatch):
    from merge import hashing

    scan([a1111], db=known)
    hashed = []
    real = hashing.file_hashes
    monkeypatch.setattr(hashing, "file_hashes", lambda p, **k: hashed.append(p) or real(p, **k))
    scan([a1111], db=known)
    assert all(hashing.cached(p, autov3=False) is not None for p in hashed)  # the second scan read only the cache
    assert not any("detail-tweaker" in str(p) or "vae-ft" in str(p) for p in hashed)


def test_a_rescan_reads_no_header_until_a_file_changes(a1111, known, monkeypatch):
    import merge.header

    scan([a1111], db=known, offline=True)
    reads = []
    real = merge.header.read_header
    monkeypatch.setattr(merge.header, "read_header", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    again = scan([a1111], db=known, offline=True)
    assert reads == [] and len(again[0].checkpoints) == 4 and len(again[0].skipped) == 3
    lonely = a1111 / "models" / "Stable-diffusion" / "lonely.safetensors"
    write_checkpoint(lonely, "sd1", "inpaint", 99)  # replaced by another file under the same name
    (r,) = scan([a1111], db=known, offline=True)
    assert [str(p) for p in reads] == [str(lonely)]
    assert next(c for c in r.checkpoints if c.path == str(lonely)).variant == "inpaint"


def test_a_comfyui_install_with_extra_model_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "diffusion_models").mkdir(parents=True)
    shared = tmp_path / "a1111" / "models" / "Stable-diffusion"
    shared.mkdir(parents=True)
    write_checkpoint(root / "models" / "checkpoints" / "xl.safetensors", "sdxl", "normal", 1, scale=32)
    write_checkpoint(shared / "shared.safetensors", "sd1", "normal", 2)
    (root / "extra_model_paths.yaml").write_text(f"a111:\n    base_path: {tmp_path / 'a1111'}\n"
                                                 "    checkpoints: models/Stable-diffusion\n")  # fmt: skip
    layout, folders = checkpoint_folders(root)
    assert layout == "comfyui" and shared in folders
    result = json.loads(run_cli("scan", str(root), "--json", "--db", str(tmp_path / "none.db"),
                                env=cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))).stdout)  # fmt: skip
    assert result["layout"] == "comfyui"
    families = {os.path.basename(c["path"]): c["family"] for c in result["checkpoints"]}
    assert families == {"xl.safetensors": "sdxl", "shared.safetensors": "sd1"}
    partners = {os.path.basename(c["path"]): c["partner"] for c in result["checkpoints"]}
    assert partners["shared.safetensors"]["kind"] == "official"
    assert partners["xl.safetensors"]["kind"] == "patch" and partners["xl.safetensors"]["buildable"]


def test_the_cli_table_and_a_missing_folder(a1111, known, tmp_path):
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"), INPAINT_ADVISOR_DB=known, COLUMNS="100")
    shown = run_cli("scan", str(a1111), env=env)
    assert shown.returncode == 0 and "on disk" in shown.stdout and "its-inpainting.safetensors" in shown.stdout
    assert "set aside" in shown.stdout and "LoRA" in shown.stdout
    assert all(len(line) <= 100 for line in shown.stdout.splitlines())
    missing = run_cli("scan", str(tmp_path / "nope"), "--json", env=env)
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["code"] == "bad-query"
    assert "no such folder" in json.loads(missing.stdout)["error"]["message"]
    (tmp_path / "one.safetensors").write_bytes(b"x")  # a file: said to be one, with where to go instead
    a_file = run_cli("scan", str(tmp_path / "one.safetensors"), env=env)
    assert a_file.returncode == 2 and "not a folder" in a_file.stderr and "lookup FILE" in a_file.stderr


def test_an_error_page_saved_as_a_ckpt_is_said_to_be_one_by_scan_as_by_probe(tmp_path):
    from advisor.local.probe import probe
    from merge.header import CheckpointError

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "html.ckpt").write_text("<html>nope</html>")
    (r,) = scan([tmp_path / "models"], db=str(tmp_path / "none.db"), offline=True)
    (skipped,) = r.skipped
    assert "an error page or a text file" in skipped.reason and "only torch" not in skipped.reason
    with pytest.raises(CheckpointError, match="an error page or a text file"):
        probe(tmp_path / "models" / "html.ckpt")


def test_a_registry_that_is_not_one_is_one_line(a1111, tmp_path):
    (tmp_path / "text.db").write_text("not a database\n")
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"), INPAINT_ADVISOR_DB=str(tmp_path / "text.db"))
    for args in (["scan", str(a1111), "--offline"], ["scan", str(a1111), "--offline", "--build", "--dry-run"]):
        plain, as_json = run_cli(*args, env=env), run_cli(*args, "--json", env=env)
        assert plain.returncode == 2 and "Traceback" not in plain.stderr and "not a SQLite database" in plain.stderr
        assert json.loads(as_json.stdout)["error"]["code"] == "not-a-registry"


def test_unknown_hashes_are_asked_of_civitai_in_batches_and_stored(a1111, registry_db, serve, monkeypatch):
    sd = a1111 / "models" / "Stable-diffusion"
    item = synthetic_item(630001, random.Random(4), datetime.datetime(2025, 1, 1))
    item["name"], item["type"], item["modelVersions"] = "Lonely Mix", "Checkpoint", item["modelVersions"][:1]
    v = item["modelVersions"][0]
    v["baseModel"], v["baseModelType"], v["files"] = "SD 1.5", "Standard", v["files"][:1]
    v["files"][0].update(name="lonelyMix.safetensors", hashes={"SHA256": _sha(sd / "lonely.safetensors")})
    fake = FakeCivitai([item])
    monkeypatch.setenv("INPAINT_ADVISOR_CIVITAI_URL", serve(fake))
    (r,) = scan([a1111], db=registry_db)
    by_name = {os.path.basename(c.path): c for c in r.checkpoints}
    assert r.asked_civitai == 3 and r.found_on_civitai == 1  # the three hashed checkpoints; one is on Civitai
    assert by_name["lonely.safetensors"].match.name == "Lonely Mix"
    posts = [q for q in fake.requests if q.get("method") == "POST"]
    assert len(posts) == 1 and len(posts[0]["body"]) == 3
    again_posts = len(posts)
    scan([a1111], db=registry_db)  # now known: only the two still unknown are asked again
    posts = [q for q in fake.requests if q.get("method") == "POST"]
    assert len(posts) == again_posts + 1 and len(posts[-1]["body"]) == 2
    (offline,) = scan([a1111], db=registry_db, offline=True)
    assert offline.asked_civitai == 0 and len([q for q in fake.requests if q.get("method") == "POST"]) == len(posts)


def test_by_hash_asks_at_most_100_hashes_a_request(serve):
    fake = FakeCivitai([])
    hashes = [f"{i:064X}" for i in range(250)]
    assert civitai.fetch_by_hashes(hashes, base_url=serve(fake)) == []
    assert [len(q["body"]) for q in fake.requests if q.get("method") == "POST"] == [100, 100, 50]


def test_civitai_out_of_reach_is_a_note_and_the_scan_goes_on(a1111, registry_db, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CIVITAI_URL", "http://127.0.0.1:9")
    (r,) = scan([a1111], db=registry_db)
    assert len(r.checkpoints) == 4 and any("could not ask Civitai" in n for n in r.notes)


@pytest.fixture
def hub_pair(tmp_path, monkeypatch):
    """The official SD 1.x pair on a fake Hub (tiny real-layout files), as build tests use it."""
    from tests.build_world import RealFile, build_servers
    from tests.hf_fake import FakeHub, FakeRepo, point_official_pair

    made = tmp_path / "official"
    made.mkdir()
    write_checkpoint(made / "a.safetensors", "sd1", "inpaint", 1)
    write_checkpoint(made / "c.safetensors", "sd1", "normal", 3)
    a, c = (made / "a.safetensors").read_bytes(), (made / "c.safetensors").read_bytes()
    hub = FakeHub([FakeRepo("t/sd1-inpainting", files={"sd-v1-5-inpainting.safetensors": RealFile(a)}),
                   FakeRepo("t/sd1-base", files={"v1-5-pruned-emaonly.safetensors": RealFile(c)})])  # fmt: skip
    with build_servers(monkeypatch, tmp_path, hub):
        point_official_pair(monkeypatch, "sd1", ("t/sd1-inpainting", "sd-v1-5-inpainting.safetensors", a),
                            ("t/sd1-base", "v1-5-pruned-emaonly.safetensors", c))  # fmt: skip
        yield hub


def test_scan_build_gets_every_missing_partner_and_resumes_after_a_failure(a1111, known, hub_pair, monkeypatch):
    from advisor.build import batch

    sd = a1111 / "models" / "Stable-diffusion"
    (r,) = scan([a1111], db=known, offline=True)
    wanted = batch.todo([r])
    assert sorted(os.path.basename(p) for p in wanted) == ["diffusers-model", "lonely.safetensors"]
    plan = batch.run_batch(wanted, db=known, dry_run=True)
    assert plan.disk_needed > 0 and {i.status for i in plan.items} == {"planned"}
    assert not list(sd.glob("*-inpainting.safetensors"))  # a dry run writes nothing
    real = batch.run_build

    def failing_once(plan, **kw):  # the first item's build fails in the middle of the batch
        if plan.result.query.endswith("diffusers-model"):
            raise batch.BuildError("the network went away", "network")
        return real(plan, **kw)

    monkeypatch.setattr(batch, "run_build", failing_once)
    first = batch.run_batch(wanted, db=known)
    assert {os.path.basename(i.path): i.status for i in first.items} == {"diffusers-model": "failed",
                                                                         "lonely.safetensors": "done"}  # fmt: skip
    assert (sd / "lonely-inpainting.safetensors").exists()
    monkeypatch.setattr(batch, "run_build", real)
    (again,) = scan([a1111], db=known, offline=True)  # the built one is now its model's partner
    lonely = next(c for c in again.checkpoints if c.path.endswith("lonely.safetensors"))
    assert lonely.partner.kind == "built" and lonely.partner.path == str(sd / "lonely-inpainting.safetensors")
    resumed = batch.run_batch(batch.todo([again]), db=known)
    assert [(os.path.basename(i.path), i.status) for i in resumed.items] == [("diffusers-model", "done")]
    assert (sd / "diffusers-model-inpainting.safetensors").exists()
    assert batch.todo([scan([a1111], db=known, offline=True)[0]]) == []  # nothing left to do


def test_scan_build_cli_summary_and_exit_status(a1111, known, hub_pair, tmp_path):
    import os as _os

    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"), INPAINT_ADVISOR_DB=known, COLUMNS="100",
                  HF_ENDPOINT=_os.environ["HF_ENDPOINT"], HF_HUB_CACHE=str(tmp_path / "hf-cache"))  # fmt: skip
    dry = run_cli("scan", str(a1111), "--build", "--dry-run", "--offline", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] and len(planned["items"]) == 2 and planned["disk_needed"] > 0
    each = [i["disk_needed"] for i in planned["items"]]  # each build fetches the family's A and C ...
    assert planned["disk_needed"] < sum(each) and planned["disk_needed"] >= max(each)  # ... the batch once
    # a child process does not see this test's fake official pair: its builds fail, one row each, exit 1
    one = run_cli("scan", str(a1111), "--build", "--limit", "1", env=env)
    assert one.returncode == 1 and "done 0, skipped 0, failed 1" in one.stdout, one.stdout + one.stderr
    assert "lonely.safetensors" in one.stdout and "Traceback" not in one.stderr


@pytest.mark.parametrize("disk, flag, spinning", [("sda", "1", True), ("nvme0n1", "0", False), ("vda", "1", False),
                                                  ("xvda", "1", False)])  # fmt: skip
def test_only_a_spinning_disk_is_hashed_one_file_at_a_time(tmp_path, disk, flag, spinning):
    from advisor.local.scan import _rotational

    f = tmp_path / "m.safetensors"
    f.write_bytes(b"x")
    dev = os.stat(f).st_dev
    part = tmp_path / "sys" / "devices" / "pci0" / "block" / disk / f"{disk}1"
    (part.parent / "queue").mkdir(parents=True)
    part.mkdir()
    (part.parent / "queue" / "rotational").write_text(flag + "\n")
    link = tmp_path / "sys" / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}"
    link.parent.mkdir(parents=True)
    link.symlink_to(part)
    assert _rotational(f, tmp_path / "sys") is spinning
    assert _rotational(f, tmp_path / "nowhere") is False  # no sysfs: cannot be told


@pytest.mark.parametrize("layout, marks, folder", [
    ("invokeai", ["invokeai.yaml"], "models/sdxl/main"),
    ("swarmui", ["launch-linux.sh"], "Models/Stable-Diffusion"),
    ("fooocus", ["fooocus_version.py"], "models/checkpoints"),
])  # fmt: skip
def test_invokeai_swarmui_and_fooocus_installs_are_recognised(tmp_path, monkeypatch, layout, marks, folder):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    root = tmp_path / layout
    for mark in marks:
        (root / mark).parent.mkdir(parents=True, exist_ok=True)
        (root / mark).write_text("")
    (root / folder).mkdir(parents=True)
    write_checkpoint(root / folder / "mine.safetensors", "sdxl", "normal", 21, scale=32)
    (root / "models" / "loras").mkdir(parents=True, exist_ok=True)  # a LoRA beside: never a checkpoint
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8)},
              root / "models" / "loras" / "style.safetensors")
    found, folders = checkpoint_folders(root)
    assert found == layout and all(f.is_dir() for f in folders)
    (r,) = scan([root], db=str(tmp_path / "none.db"), offline=True)
    assert r.layout == layout and [os.path.basename(c.path) for c in r.checkpoints] == ["mine.safetensors"]
    assert r.checkpoints[0].family == "sdxl" and r.checkpoints[0].partner is not None
    if layout == "fooocus":  # an SDXL fine-tune: the table names the route that ranks first, and the build
        table = run_cli("scan", str(root), "--offline", "--db", str(tmp_path / "none.db"),
                        env=cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"), COLUMNS="160")).stdout
        assert "patch it" in table and "Fooocus inpaint patch (or: inpaint-advisor build" in table
    if layout == "invokeai":  # its whole models tree is walked: the LoRA is met and set aside
        assert [(os.path.basename(s.path), "LoRA" in s.reason) for s in r.skipped] == [("style.safetensors", True)]
