"""`get`: the answer's files in the UI's own folders, verified, resumable, shared with the build cache."""

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from advisor.advice import routes
from advisor.build.cache import files_dir
from advisor.get import GetError, get, plan_get
from advisor.local import uis
from tests.build_world import RealFile, sd1_world
from tests.conftest import ROOT, cli_env, run_cli
from tests.hf_fake import FakeHub, FakeRepo, HubServer, point_official_pair

PATCH, HEAD = "inpaint_v26.fooocus.patch", "fooocus_inpaint_head.pth"
PROMAX = "diffusion_pytorch_model_promax.safetensors"
SD1_REPO, SD1_FILE = "stable-diffusion-v1-5/stable-diffusion-inpainting", "sd-v1-5-inpainting.ckpt"

# (ui, what marks its root, kind -> where it keeps that kind, relative to the root; None: nowhere)
LAYOUTS = [
    ("comfyui", ["comfy"], {"checkpoint": "models/checkpoints", "diffusion_model": "models/diffusion_models",
                            "controlnet": "models/controlnet", "inpaint": "models/inpaint",
                            "model_patch": "models/model_patches", "lora": "models/loras"}),
    ("fooocus", ["fooocus_version.py", "modules", "webui.py"],
     {"checkpoint": "models/checkpoints", "controlnet": "models/controlnet", "inpaint": "models/inpaint",
      "lora": "models/loras", "diffusion_model": None, "model_patch": None}),
    ("forge", ["webui.py", "modules", "modules_forge/main_entry.py"],
     {"checkpoint": "models/Stable-diffusion", "diffusion_model": "models/Stable-diffusion",
      "controlnet": "models/ControlNet", "inpaint": "models/ControlNet", "lora": "models/Lora", "model_patch": None}),
    ("reforge", ["webui.py", "modules", "modules_forge/forge_loader.py", "ldm_patched"],
     {"checkpoint": "models/Stable-diffusion", "controlnet": "models/ControlNet", "inpaint": "models/ControlNet",
      "lora": "models/Lora", "diffusion_model": None, "model_patch": None}),
    ("a1111", ["webui.py", "modules"],
     {"checkpoint": "models/Stable-diffusion", "controlnet": "models/ControlNet", "lora": "models/Lora",
      "inpaint": None, "diffusion_model": None, "model_patch": None}),
    ("swarmui", ["launch-linux.sh"],
     {"checkpoint": "Models/Stable-Diffusion", "diffusion_model": "Models/diffusion_models",
      "controlnet": "Models/controlnet", "model_patch": "Models/model_patches", "lora": "Models/Lora",
      "inpaint": None}),
    ("invokeai", ["invokeai.yaml"],
     {"checkpoint": "inpaint-advisor", "controlnet": None, "inpaint": None, "lora": None, "diffusion_model": None,
      "model_patch": None}),
]  # fmt: skip


def _install(tmp_path, ui: str, marks: list[str]):
    root = tmp_path / ui
    for mark in marks:
        path = root / mark
        path.parent.mkdir(parents=True, exist_ok=True)
        if "." in mark:
            path.write_text("")
        else:
            path.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize("ui, marks, where", LAYOUTS, ids=[u for u, _, _ in LAYOUTS])
def test_each_ui_is_told_from_its_folder_and_every_kind_lands_where_it_reads_it(tmp_path, ui, marks, where):
    root = _install(tmp_path, ui, marks)
    install = uis.find(root)
    assert install.ui == ui and install.recognised
    assert set(where) == set(uis.kinds())
    for kind, relative in where.items():
        assert install.folder(kind) == (root / relative if relative else None), kind
    spec = uis.spec(ui)
    assert spec["sources"], f"{ui}: every destination names its source"


def _file(seed: int, n: int = 4096) -> RealFile:
    return RealFile(hashlib.sha256(str(seed).encode()).digest() * (n // 32))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub serving the Fooocus patch, ProMax and SD 1.5's official inpainting model, the bundled data pinned to
    what it serves."""
    files = {("lllyasviel/fooocus_inpaint", PATCH): _file(1), ("lllyasviel/fooocus_inpaint", HEAD): _file(2, 512),
             ("xinsir/controlnet-union-sdxl-1.0", PROMAX): _file(3)}  # fmt: skip
    repos: dict[str, FakeRepo] = {}
    for (repo, name), f in files.items():
        repos.setdefault(repo, FakeRepo(repo)).files[name] = f
    sd1 = _file(4, 8192)
    repos[SD1_REPO] = FakeRepo(SD1_REPO, files={SD1_FILE: sd1})
    data = copy.deepcopy(routes._data())
    for spec in data["routes"]:
        for f in spec["files"]:
            if (f["repo"], f["file"]) in files:
                served = files[(f["repo"], f["file"])]
                f.update(sha256=hashlib.sha256(served.content).hexdigest(), size=len(served.content))
    monkeypatch.setattr(routes, "_data", lambda: data)
    point_official_pair(monkeypatch, "sd1", (SD1_REPO, SD1_FILE, sd1.content), (SD1_REPO, SD1_FILE, sd1.content))
    fake = FakeHub(list(repos.values()))
    with HubServer(fake) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        fake.data = data  # type: ignore[attr-defined]
        fake.files = files  # type: ignore[attr-defined]
        yield fake


def _fetches(hub) -> list[str]:
    return [r for r in hub.requests if "/resolve/" in r]


def test_a_route_lands_in_comfyui_verified_and_the_same_command_again_fetches_nothing(tmp_path, hub):
    root = _install(tmp_path, "comfyui", ["comfy"])
    result = get("sdxl", root=root, db=str(tmp_path / "r.db"))
    assert result.action == "ready" and result.answer.route == "fooocus-inpaint"
    assert [(p.kind, p.name, p.state, p.verified) for p in result.files] == [
        ("inpaint", PATCH, "fetched", True), ("inpaint", HEAD, "fetched", True)]  # fmt: skip
    served = hub.files[("lllyasviel/fooocus_inpaint", PATCH)].content
    assert (root / "models" / "inpaint" / PATCH).read_bytes() == served
    assert result.needs == ["https://github.com/Acly/comfyui-inpaint-nodes"]
    assert "Load Fooocus Inpaint" in result.steps[0]
    fetched = len(_fetches(hub))
    again = get("sdxl", root=root, db=str(tmp_path / "r.db"))
    assert again.action == "ready" and {p.state for p in again.files} == {"present"}
    assert len(_fetches(hub)) == fetched


def test_forge_takes_the_patch_alone_as_a_controlnet(tmp_path, hub):
    root = _install(tmp_path, "forge", ["webui.py", "modules", "modules_forge"])
    result = get("sdxl", root=root, db=str(tmp_path / "r.db"))
    # Forge ships the head itself
    assert [p.destination for p in result.files] == [str(root / "models" / "ControlNet" / PATCH)]
    assert result.needs == [] and "sd_forge_fooocus_inpaint" in result.steps[0]


def test_a1111_passes_the_patch_over_for_promax_under_a_name_that_says_what_it_is(tmp_path, hub):
    root = _install(tmp_path, "a1111", ["webui.py", "modules"])
    result = get("sdxl", root=root, db=str(tmp_path / "r.db"))
    assert result.answer.route == "controlnet-union-promax"
    assert "Fooocus inpaint patch: no known way to use it in AUTOMATIC1111" in result.passed_over[0]
    (placed,) = result.files
    named = "xinsir-controlnet-union-sdxl-1.0-promax.safetensors"
    assert placed.destination == str(root / "models" / "ControlNet" / named)
    served = hub.files[("xinsir/controlnet-union-sdxl-1.0", PROMAX)].content
    assert placed.verified and os.path.getsize(placed.destination) == len(served)
    assert result.needs == ["https://github.com/Mikubill/sd-webui-controlnet"]  # A1111 has no ControlNet of its own


def test_the_official_model_lands_in_the_checkpoints(tmp_path, hub):
    root = _install(tmp_path, "comfyui", ["comfy"])
    result = get("sd 1.5", root=root, db=str(tmp_path / "r.db"))
    assert result.answer.kind == "official"
    (placed,) = result.files
    assert placed.destination == str(root / "models" / "checkpoints" / SD1_FILE) and placed.verified
    assert any("Load Checkpoint" in s for s in result.steps)


def test_a_wrong_sha256_is_refused_and_nothing_is_left(tmp_path, hub):
    for spec in hub.data["routes"]:
        if spec["id"] == "fooocus-inpaint":
            spec["files"][0]["sha256"] = "0" * 64
    root = _install(tmp_path, "comfyui", ["comfy"])
    with pytest.raises(GetError) as refused:
        get("sdxl", root=root, db=str(tmp_path / "r.db"))
    assert refused.value.code == "hash-mismatch" and "0" * 64 in str(refused.value)
    folder = root / "models" / "inpaint"
    assert not folder.exists() or [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    assert not any(p.suffix == ".partial" for p in folder.iterdir()) if folder.exists() else True


def test_dry_run_touches_nothing(tmp_path, hub):
    root = _install(tmp_path, "comfyui", ["comfy"])
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = get("sdxl", root=root, db=str(tmp_path / "r.db"), dry_run=True)
    assert result.action == "planned" and {p.state for p in result.files} == {"missing"}
    assert result.disk_needed == sum(len(hub.files[("lllyasviel/fooocus_inpaint", n)].content) for n in (PATCH, HEAD))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before and _fetches(hub) == []


def test_extra_model_paths_are_searched_and_a_default_section_receives(tmp_path, hub):
    root = _install(tmp_path, "comfyui", ["comfy"])
    shared, default = tmp_path / "shared", tmp_path / "default"
    (shared / "inpaint").mkdir(parents=True)
    (shared / "inpaint" / HEAD).write_bytes(hub.files[("lllyasviel/fooocus_inpaint", HEAD)].content)
    (root / "extra_model_paths.yaml").write_text(
        f"shared:\n  base_path: {shared}\n  inpaint: inpaint\n"
        f"mine:\n  base_path: {default}\n  is_default: true\n  inpaint: my-inpaint\n")  # fmt: skip
    result = get("sdxl", root=root, db=str(tmp_path / "r.db"))
    by_name = {p.name: p for p in result.files}
    assert by_name[HEAD].state == "present" and by_name[HEAD].path == str(shared / "inpaint" / HEAD)
    assert by_name[PATCH].path == str(default / "my-inpaint" / PATCH)
    assert not any(HEAD in r for r in _fetches(hub))


def test_a_file_the_build_cache_holds_is_linked_not_fetched(tmp_path, hub):
    cached = files_dir() / "hf" / "lllyasviel--fooocus_inpaint" / PATCH
    cached.parent.mkdir(parents=True)
    cached.write_bytes(hub.files[("lllyasviel/fooocus_inpaint", PATCH)].content)
    root = _install(tmp_path, "comfyui", ["comfy"])
    result = get("sdxl", root=root, db=str(tmp_path / "r.db"))
    assert {p.name: p.state for p in result.files} == {PATCH: "copied", HEAD: "fetched"}
    assert not any(PATCH in r for r in _fetches(hub))
    assert (root / "models" / "inpaint" / PATCH).read_bytes() == cached.read_bytes()


def test_a_ui_that_can_use_none_of_the_answers_says_why_for_each(tmp_path, hub):
    root = _install(tmp_path, "swarmui", ["launch-linux.sh"])
    with pytest.raises(GetError) as nothing:
        plan_get("flux.1", root=root, db=str(tmp_path / "r.db"), offline=True, route="flux-controlnet-inpainting")
    assert nothing.value.code == "no-route-for-ui" and "no known way to use it in SwarmUI" in str(nothing.value)


GET = """
import json, sys
from advisor.advice import routes
data = json.load(open(sys.argv[1]))
routes._data = lambda: data
from advisor.get import get
r = get("sdxl", root=sys.argv[2], db=sys.argv[3])
print(r.action, [(p.state, p.bytes) for p in r.files])
"""


def test_a_get_killed_mid_fetch_is_finished_by_the_same_command(tmp_path, hub):
    root = _install(tmp_path, "comfyui", ["comfy"])
    patch = hub.files[("lllyasviel/fooocus_inpaint", PATCH)]
    patch.hold_after = len(patch.content) // 2
    (tmp_path / "routes.json").write_text(json.dumps(hub.data))
    env = cli_env(HF_ENDPOINT=os.environ["HF_ENDPOINT"], INPAINT_ADVISOR_CACHE=os.environ["INPAINT_ADVISOR_CACHE"],
                  HF_HUB_CACHE=os.environ["HF_HUB_CACHE"])  # fmt: skip
    args = [sys.executable, "-c", GET, str(tmp_path / "routes.json"), str(root), str(tmp_path / "r.db")]
    child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hub.holding.wait(60), child.communicate(timeout=5)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        hub.release.set()
    assert not (root / "models" / "inpaint" / PATCH).exists()  # never a half file under the final name
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("ready")
    assert (root / "models" / "inpaint" / PATCH).read_bytes() == patch.content


def test_the_cli_plans_prints_a_manifest_and_fails_in_one_json_line(tmp_path):
    root = _install(tmp_path, "comfyui", ["comfy"])
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    db = str(tmp_path / "none.db")
    manifest = run_cli("get", "sdxl", "--root", str(root), "--manifest", "--offline", "--db", db, env=env)
    assert manifest.returncode == 0, manifest.stderr
    files = json.loads(manifest.stdout)["files"]
    assert [(f["kind"], f["destination"]) for f in files] == [
        ("inpaint", str(root / "models" / "inpaint" / PATCH)), ("inpaint", str(root / "models" / "inpaint" / HEAD))]
    assert all(len(f["sha256"]) == 64 and f["url"].endswith(f["name"]) for f in files)
    human = run_cli("get", "sdxl", "--root", str(root), "--dry-run", "--offline", "--db", db,
                    env=cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"), COLUMNS="60"))  # fmt: skip
    assert human.returncode == 0  # at 60 columns, each path is still one line: it copies whole
    assert str(root / "models" / "inpaint" / PATCH) in [line.strip() for line in human.stdout.splitlines()]
    plain = tmp_path / "plain"
    plain.mkdir()
    refused = run_cli("get", "sdxl", "--root", str(plain), "--json", "--offline", "--db", db, env=env)
    assert refused.returncode == 2 and json.loads(refused.stdout)["error"]["code"] == "no-ui"
    wrong = run_cli("get", "sdxl", "--root", str(root), "--ui", "a1111", "--json", "--offline", "--db", db, env=env)
    assert wrong.returncode == 2 and "ComfyUI's folder" in json.loads(wrong.stdout)["error"]["message"]


def test_flux_fill_is_a_diffusion_model_where_the_ui_keeps_them(tmp_path, hub):
    root = _install(tmp_path, "swarmui", ["launch-linux.sh"])
    plan = plan_get("flux.1", root=root, db=str(tmp_path / "r.db"), offline=True)
    assert plan.result.answer.kind == "official"
    fill = root / "Models" / "diffusion_models" / "flux1-fill-dev.safetensors"
    assert [p.destination for p in plan.result.files] == [str(fill)]


def _comfyui_with_three_sdxl_models(tmp_path, seed: int):
    """A ComfyUI install whose checkpoints folder holds xl0..xl2 (SDXL fine-tunes that share a route)."""
    from tests.sd_layouts import write_checkpoint

    root = _install(tmp_path, "comfyui", ["comfy"])
    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for i in range(3):
        write_checkpoint(checkpoints / f"xl{i}.safetensors", "sdxl", "normal", seed + i, scale=32)
    return root


def test_scan_get_fetches_a_shared_route_once_goes_on_after_a_failure_and_resumes(tmp_path, hub):
    from advisor.get.batch import get_folder
    from advisor.local.scan import scan
    from tests.sd_layouts import write_checkpoint

    root = _comfyui_with_three_sdxl_models(tmp_path, 30)
    checkpoints = root / "models" / "checkpoints"
    write_checkpoint(checkpoints / "old.safetensors", "sd2", "normal", 40)  # its official model is not served
    db = str(tmp_path / "r.db")
    (scanned,) = scan([root], db=db, offline=True)
    batch = get_folder(scanned, db=db)
    by_name = {os.path.basename(i.path): i for i in batch.items}
    assert [by_name[f"xl{i}.safetensors"].status for i in range(3)] == ["done"] * 3
    assert by_name["old.safetensors"].status == "failed" and by_name["old.safetensors"].reason
    assert batch.files == 3 and batch.count("failed") == 1  # the patch, its head, SD 2's official file
    assert sum(PATCH in r for r in _fetches(hub)) == 1  # one fetch for three models
    assert by_name["xl0.safetensors"].files == [str(root / "models" / "inpaint" / PATCH),
                                                str(root / "models" / "inpaint" / HEAD)]  # fmt: skip
    again = get_folder(scan([root], db=db, offline=True)[0], db=db)
    assert [i.status for i in again.items if "xl" in i.path] == ["skipped"] * 3
    assert sum(PATCH in r for r in _fetches(hub)) == 1


def test_scan_get_does_not_fetch_again_for_the_next_model_a_shared_file_that_failed(tmp_path, hub):
    from advisor.get.batch import get_folder
    from advisor.local.scan import scan

    root = _comfyui_with_three_sdxl_models(tmp_path, 50)
    del hub.repo("lllyasviel/fooocus_inpaint").files[PATCH]  # the Hub lost the patch: 404
    db = str(tmp_path / "r.db")
    batch = get_folder(scan([root], db=db, offline=True)[0], db=db)
    assert [i.status for i in batch.items] == ["failed"] * 3
    assert sum(PATCH in r for r in _fetches(hub)) == 1  # asked once, for the first model
    assert sum("not tried again" in i.reason for i in batch.items) == 2, [i.reason for i in batch.items]


def _check_workflow(graph: dict, root) -> None:
    """Every node is one data/comfy_nodes.json defines (read from the node packs' source), with exactly its
    inputs; every link joins an output to an input of the same type; every file a loader names is in the
    folder it lists."""
    from data import load

    defs = load("comfy_nodes")["nodes"]
    folders = {"checkpoints": "checkpoints", "inpaint": "inpaint", "controlnet": "controlnet",
               "diffusion_models": "diffusion_models", "loras": "loras", "model_patches": "model_patches"}  # fmt: skip
    for node in graph.values():
        spec = defs[node["class_type"]]
        declared = {**spec["required"], **spec.get("optional", {})}
        assert set(spec["required"]) <= set(node["inputs"]) <= set(declared), node
        for name, value in node["inputs"].items():
            kind = declared[name]
            if isinstance(value, list):
                source = graph[value[0]]
                assert defs[source["class_type"]]["outputs"][value[1]] == kind, (node, name)
            elif kind == "COMBO" and name in spec.get("choices", {}):
                assert value in spec["choices"][name], (node, name)
            elif kind.startswith("COMBO:") and kind != "COMBO:input":
                listed = root / "models" / folders[kind.split(":")[1]]
                assert (listed / value).is_file(), f"{value} is not in {listed}"
            else:
                expected = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool, "COMBO": str,
                            "COMBO:input": str}[kind]  # fmt: skip
                assert isinstance(value, expected), (node, name)
    assert any(n["class_type"] == "SaveImage" for n in graph.values())


def test_comfyui_gets_a_workflow_that_wires_the_users_model_with_the_patch(tmp_path, hub):
    from tests.sd_layouts import write_checkpoint

    root = _install(tmp_path, "comfyui", ["comfy"])
    mine = root / "models" / "checkpoints" / "xl" / "myTune.safetensors"
    mine.parent.mkdir(parents=True)
    write_checkpoint(mine, "sdxl", "normal", 7, scale=32)
    result = get(str(mine), root=root, db=str(tmp_path / "r.db"), offline=False)
    assert result.answer.route == "fooocus-inpaint" and result.workflow_path is not None
    written = json.loads(Path(result.workflow_path).read_text())
    assert written == result.workflow
    _check_workflow(written, root)
    loader = next(n for n in written.values() if n["class_type"] == "CheckpointLoaderSimple")
    assert loader["inputs"]["ckpt_name"] == "xl/myTune.safetensors"  # as Load Checkpoint lists it
    sampler = next(n for n in written.values() if n["class_type"] == "KSampler")
    assert written[sampler["inputs"]["model"][0]]["class_type"] == "INPAINT_ApplyFooocusInpaint"
    assert any("Open in MaskEditor" in s for s in result.steps)


def test_the_official_checkpoint_comes_with_its_workflow_and_a_named_model_asks_to_pick_one(tmp_path, hub):
    from advisor.get.workflow import YOUR_MODEL

    root = _install(tmp_path, "comfyui", ["comfy"])
    official = get("sd 1.5", root=root, db=str(tmp_path / "r.db"))
    _check_workflow(official.workflow, root)
    assert official.workflow["1"]["inputs"]["ckpt_name"] == SD1_FILE
    named = get("sdxl", root=root, db=str(tmp_path / "r.db"), dry_run=True)
    assert named.workflow["1"]["inputs"]["ckpt_name"] == YOUR_MODEL
    assert any("pick your model" in s for s in named.steps)
    assert not os.path.exists(named.workflow_path)  # a dry run writes no workflow
    a1111 = get("sd 1.5", root=_install(tmp_path, "a1111", ["webui.py", "modules"]), db=str(tmp_path / "r.db"),
                dry_run=True)  # fmt: skip
    assert a1111.workflow is None  # workflows are ComfyUI's


@pytest.fixture
def world(tmp_path, monkeypatch, registry_db):
    with sd1_world(tmp_path, monkeypatch, registry_db) as w:
        yield w


def test_a_release_lands_in_the_checkpoints_and_a_build_is_built_there(world):
    from advisor.local.uis import find

    root = _install(world["tmp"], "a1111", ["webui.py", "modules"])
    got = get("civitai:600002", root=root, db=world["db"])
    assert got.answer.kind == "own-release" and got.action == "ready"
    (placed,) = got.files
    assert placed.destination == str(root / "models" / "Stable-diffusion" / "tinyRelease-inpainting.safetensors")
    assert placed.verified and placed.state == "fetched"
    assert placed.url.startswith(os.environ["INPAINT_ADVISOR_CIVITAI_URL"]) and "fileId=" in placed.url
    itself = get("civitai:600002@9999001", root=_install(world["tmp"], "forge", ["modules_forge"]), db=world["db"])
    assert itself.answer.kind == "already-inpainting" and itself.build.action == "already-inpainting"
    assert Path(itself.checkpoint).parent == (world["tmp"] / "forge" / "models" / "Stable-diffusion").resolve()

    comfy = _install(world["tmp"], "comfyui", ["comfy"])
    built = get("civitai:600001", root=comfy, db=world["db"], route="build")
    assert built.answer.kind == "build" and built.build is not None and built.build.verified
    output = Path(built.build.output.path)
    assert output.parent == (comfy / "models" / "checkpoints").resolve() and output.is_file()
    assert built.workflow["1"]["inputs"]["ckpt_name"] == output.name
    _check_workflow(built.workflow, comfy)
    assert find(comfy).ui == "comfyui"
    again = get("civitai:600001", root=comfy, db=world["db"], route="build")
    assert again.action == "ready" and again.build.action == "already-built"


def test_get_enqueue_without_a_postgresql_registry_says_what_team_mode_needs(tmp_path):
    root = _install(tmp_path, "comfyui", ["comfy"])
    done = run_cli("get", "sdxl", "--root", str(root), "--enqueue", "--json", "--db", str(tmp_path / "r.db"))
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["code"] == "needs-postgres"


def test_fooocus_takes_its_own_patch_and_no_inpainting_checkpoint(tmp_path):
    root = _install(tmp_path, "fooocus", ["fooocus_version.py", "modules", "webui.py"])
    patch = plan_get("sdxl", root=root, db=str(tmp_path / "r.db"), offline=True).result
    assert [p.destination for p in patch.files] == [str(root / "models" / "inpaint" / PATCH),
                                                    str(root / "models" / "inpaint" / HEAD)]  # fmt: skip
    assert patch.workflow is None and "inpaint engine v2.6" in patch.steps[0]
    with pytest.raises(GetError) as none:
        plan_get("sd 1.5", root=root, db=str(tmp_path / "r.db"), offline=True)
    assert none.value.code == "no-route-for-ui" and "Fooocus does not run Stable Diffusion 1.x" in str(none.value)
    flux = _install(tmp_path, "a1111", ["webui.py", "modules"])
    with pytest.raises(GetError) as refused:  # not "nothing to fetch" and a sampler trick it cannot run either
        plan_get("flux.1", root=flux, db=str(tmp_path / "r.db"), offline=True)
    assert refused.value.code == "no-route-for-ui" and "AUTOMATIC1111 does not run FLUX.1" in str(refused.value)


def test_a_hostile_extra_model_paths_adds_nothing(tmp_path):
    root = _install(tmp_path, "comfyui", ["comfy"])
    aliases = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    aliases += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (root / "extra_model_paths.yaml").write_text("\n".join([*aliases, "sec:", "  checkpoints: *a8",
                                                            "  base_path: *a8", "  inpaint: 7"]))  # fmt: skip
    install = uis.find(root)  # an alias bomb is no path list: never expanded
    assert install.extra == {} and install.folder("inpaint") == root / "models" / "inpaint"
    (root / "extra_model_paths.yaml").write_bytes(b"a:\n  checkpoints: x\n" + b"#" * (2 << 20))
    assert uis.find(root).extra == {}  # far larger than any real one: not read


def test_a_models_folder_is_its_uis_and_a_bare_one_asks_which(tmp_path):
    forge = _install(tmp_path, "forge", ["webui.py", "modules", "modules_forge"])
    (forge / "models" / "Stable-diffusion").mkdir(parents=True)
    plan = plan_get("sdxl", root=forge / "models", db=str(tmp_path / "r.db"), offline=True)
    assert plan.result.ui == "forge" and plan.result.answer.route == "fooocus-inpaint"  # not A1111's answer
    bare = tmp_path / "bare" / "models"
    (bare / "Stable-diffusion").mkdir(parents=True)
    with pytest.raises(GetError) as which:
        plan_get("sdxl", root=bare, db=str(tmp_path / "r.db"), offline=True)
    assert which.value.code == "no-ui" and "AUTOMATIC1111" in str(which.value) and "Forge" in str(which.value)
    assert plan_get("sdxl", root=bare, ui="forge", db=str(tmp_path / "r.db"), offline=True).result.ui == "forge"


def test_a_local_inpainting_model_is_placed_where_the_ui_looks_and_gets_its_workflow(tmp_path):
    from tests.sd_layouts import write_checkpoint

    root = _install(tmp_path, "comfyui", ["comfy"])
    outside = tmp_path / "downloads" / "myInpaint.safetensors"
    outside.parent.mkdir()
    write_checkpoint(outside, "sd1", "inpaint", 3)
    result = get(str(outside), root=root, db=str(tmp_path / "r.db"), offline=True)
    placed = root / "models" / "checkpoints" / "myInpaint.safetensors"
    assert result.action == "ready" and placed.read_bytes() == outside.read_bytes()
    assert result.files[0].state == "copied" and result.checkpoint == str(placed)
    assert json.loads(Path(result.workflow_path).read_text())["1"]["inputs"]["ckpt_name"] == placed.name
    inside = get(str(placed), root=root, db=str(tmp_path / "r.db"), offline=True)  # in place: nothing to fetch
    assert inside.action == "nothing" and inside.files == [] and Path(inside.workflow_path).is_file()


def test_a_file_of_another_size_is_never_read_and_blocks_the_run(tmp_path, hub, monkeypatch):
    from merge import hashing

    root = _install(tmp_path, "comfyui", ["comfy"])
    (root / "models" / "inpaint").mkdir(parents=True)
    with open(root / "models" / "inpaint" / HEAD, "wb") as f:
        f.truncate(1 << 40)  # a terabyte of hole under the head's name
    read = []
    monkeypatch.setattr(hashing, "file_hashes", lambda p, **k: read.append(p))
    plan = plan_get("sdxl", root=root, db=str(tmp_path / "r.db"))
    head = next(p for p in plan.result.files if p.name == HEAD)
    assert head.state == "other-file" and read == [] and "will not replace it" in plan.result.warnings[-1]
    dry = run_cli("get", "sdxl", "--root", str(root), "--dry-run", "--offline", "--db", str(tmp_path / "none.db"),
                  env=cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache")))  # fmt: skip
    assert dry.returncode == 1 and "will not replace it" in dry.stdout


def test_a_cache_file_changed_after_it_was_hashed_is_fetched_instead(tmp_path, hub, monkeypatch):
    from advisor.get import run
    from merge import hashing

    served = hub.files[("lllyasviel/fooocus_inpaint", PATCH)].content
    cached = files_dir() / "hf" / "lllyasviel--fooocus_inpaint" / PATCH
    cached.parent.mkdir(parents=True)
    cached.write_bytes(served)
    real = hashing.file_hashes

    def hash_then_tamper(path, **kw):
        got = real(path, **kw)
        if Path(path) == cached:
            cached.write_bytes(b"\0" * len(served))  # same size, other bytes, after the hash was taken
        return got

    monkeypatch.setattr(run.hashing, "file_hashes", hash_then_tamper)
    monkeypatch.setattr(run.hashing, "cached", lambda *a, **k: None)
    root = _install(tmp_path, "comfyui", ["comfy"])
    result = get("sdxl", root=root, db=str(tmp_path / "r.db"))
    patch = next(p for p in result.files if p.name == PATCH)
    assert patch.state == "fetched" and (root / "models" / "inpaint" / PATCH).read_bytes() == served


def test_a_planned_build_counts_its_disk_and_enqueue_is_not_a_dry_run(tmp_path):
    from tests.sd_layouts import write_checkpoint

    root = _install(tmp_path, "comfyui", ["comfy"])
    mine = root / "models" / "checkpoints" / "my15.safetensors"
    mine.parent.mkdir(parents=True)
    write_checkpoint(mine, "sd1", "normal", 4)
    plan = plan_get(str(mine), root=root, route="build", db=str(tmp_path / "r.db"), offline=True)
    assert plan.result.build is not None and plan.result.disk_needed == plan.result.build.disk_needed > 0
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    mixed = run_cli("get", "sdxl", "--root", str(root), "--enqueue", "--dry-run", "--json", env=env)
    assert mixed.returncode == 2 and json.loads(mixed.stdout)["error"]["code"] == "usage"


def test_a_route_file_with_no_pin_is_checked_against_the_hubs_listing_when_a_crawl_read_it(tmp_path):
    import datetime

    from crawler import registry

    db = str(tmp_path / "r.db")
    repo = "Comfy-Org/Qwen-Image-InstantX-ControlNets"
    name = "split_files/controlnet/Qwen-Image-InstantX-ControlNet-Inpainting.safetensors"
    with registry.open(db).engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO routecheck (id, route, repo, file, alive, file_found, size, sha256, matches, detail, "
            "checked_at) VALUES (?, ?, ?, ?, 1, 1, 4096, ?, 0, '', ?)",
            (f"qwen-image-controlnet-inpainting:{repo}/{name}", "qwen-image-controlnet-inpainting", repo, name,
             "ab" * 32, datetime.datetime(2026, 12, 1)))  # fmt: skip
    root = _install(tmp_path, "comfyui", ["comfy"])
    (placed,) = plan_get("qwen-image", root=root, db=db, offline=True).result.files
    assert placed.sha256 == "AB" * 32 and placed.size == 4096 and placed.pinned_by == "the Hub's listing (2026-12-01)"
    (unchecked,) = plan_get("qwen-image", root=root, db=str(tmp_path / "none.db"), offline=True).result.files
    assert unchecked.sha256 is None and unchecked.pinned_by is None  # hashed when fetched, and said so


def test_an_inpainting_controlnet_is_wired_as_it_was_trained(tmp_path, hub):
    from tests.sd_layouts import write_checkpoint

    root = _install(tmp_path, "comfyui", ["comfy"])
    fast = root / "models" / "checkpoints" / "my_lightning_xl.safetensors"  # Lightning: ProMax ranks first
    fast.parent.mkdir(parents=True)
    write_checkpoint(fast, "sdxl", "normal", 9, scale=32)
    result = get(str(fast), root=root, db=str(tmp_path / "r.db"))
    assert result.answer.route == "controlnet-union-promax"
    assert result.needs == ["https://github.com/Fannovel16/comfyui_controlnet_aux"]
    graph = result.workflow
    _check_workflow(graph, root)
    by_class = {n["class_type"]: n for n in graph.values()}
    assert by_class["SetUnionControlNetType"]["inputs"]["type"] == "repaint"
    assert by_class["InpaintPreprocessor"]["inputs"]["black_pixel_for_xinsir_cn"] is True  # as xinsir trained it
    promax = "xinsir-controlnet-union-sdxl-1.0-promax.safetensors"
    assert by_class["ControlNetLoader"]["inputs"]["control_net_name"] == promax
    sampler = by_class["KSampler"]["inputs"]
    assert graph[sampler["latent_image"][0]]["class_type"] == "SetLatentNoiseMask"  # only the mask is repainted
    assert graph[sampler["positive"][0]]["class_type"] == "ControlNetApplyAdvanced"


def test_a_strangers_release_is_fetched_only_when_asked_for():
    from advisor.advice.ladder import Recommendation
    from advisor.advice.lookup import LookupResult
    from advisor.get.plan import _options

    found = LookupResult("photon", None, recommendation=Recommendation("official", "Use the official model."),
                         alternatives=[Recommendation("community-release", "Or try Photon Inpainting, ..."),
                                       Recommendation("build", "Make an inpainting version ...")])  # fmt: skip
    assert [r.kind for r in _options(found, None)] == ["official", "build"]
    assert [r.kind for r in _options(found, "community-release")] == ["community-release"]
