"""Inpainting routes beside the checkpoints (data/routes.json): the data file's facts, every ranking rule per
family and marker, the JSON and panel views, the Hub crawl's check of the routes' files, and scan/build."""

import json
import re

import pytest

from advisor.advice import ladder, routes
from advisor.advice.lookup import lookup
from crawler import families
from data import load
from tests.conftest import cli_env, run_cli
from tests.ladder_facts import releases

DATA = load("routes")
MARKERS = set(DATA["markers"])


def _ids(family, marks=None):
    return [r.id for r in routes.routes_for(family, marks or {})]


# -- the data file --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", DATA["routes"], ids=lambda r: r["id"])
def test_every_route_is_sourced_located_and_runnable(route):
    assert route["kind"] in routes.KINDS
    assert route["sources"] and all(u.startswith("https://") for u in route["sources"])
    assert route["ui"] and all(u["ui"] and u["how"] for u in route["ui"])
    assert route["summary"] and route["licence"] and isinstance(route["gated"], bool)
    for fam in route["score"]:
        assert fam == "*" or families.family(fam) is not None, fam
    for p in route["penalties"]:
        assert p["reason"] and p["source"] and p["points"] > 0
        assert (p.get("family") and families.family(p["family"])) or p.get("marker") in MARKERS
    assert route["files"] or route.get("where") or route["kind"] == "sampler"  # where the weights are
    for f in route["files"]:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", f["repo"]) and f["file"]
        assert f.get("size") or "size_hint" in f  # exact, or as the Hub shows it (or explicitly unknown: None)
        assert f.get("sha256") is None or re.fullmatch(r"[0-9a-f]{64}", f["sha256"])


def test_route_ids_are_unique_and_every_checkpoint_penalty_is_sourced():
    ids = [r["id"] for r in DATA["routes"]]
    assert len(ids) == len(set(ids))
    for kind in ("official", "build"):
        for p in DATA["checkpoints"][kind]["penalties"]:
            assert p["reason"] and p["source"] and p["marker"] in MARKERS


# -- ranking rules --------------------------------------------------------------------------------------------


def test_sd15_keeps_the_articles_ladder_then_its_routes():
    rec, alts, _ = ladder.recommend(ladder.Subject("my SD 1.5 model", "sd1"))
    assert [rec.kind, *[a.kind for a in alts][:3]] == ["official", "build", "controlnet", "adapter"]
    assert alts[1].route == "controlnet-inpaint-sd15" and any("inpaint_only+lama" in h for h in alts[1].how)


def test_sdxl_puts_the_fooocus_patch_first_with_the_reason():
    rec, alts, _ = ladder.recommend(ladder.Subject("Juggernaut XL", "sdxl"))
    assert rec.kind == "patch" and rec.route == "fooocus-inpaint"
    assert "better than the official inpainting model or an add-difference build" in rec.reason
    assert [a.route or a.kind for a in alts[:3]] == ["controlnet-union-promax", "official", "build"]
    assert rec.target.repo == "lllyasviel/fooocus_inpaint" and len(rec.downloads) == 2


def test_a_lightning_model_drops_the_fooocus_patch_with_the_report_that_says_so():
    rec, alts, _ = ladder.recommend(ladder.Subject("Juggernaut XL Lightning", "sdxl"))
    assert rec.route == "controlnet-union-promax"
    fooocus = next(a for a in alts if a.route == "fooocus-inpaint")
    assert [a.kind for a in alts].index("official") < alts.index(fooocus)
    trouble = [e for e in fooocus.evidence if e.startswith("known trouble")]
    assert trouble and "Lightning" in trouble[0] and "its name says 'lightning'" in trouble[0]


@pytest.mark.parametrize("query", ["SDXL Lightning", "SDXL Turbo", "stabilityai/sdxl-turbo", "sdxl turbo"])
def test_a_distilled_family_named_by_its_base_model_or_hub_repo_gets_promax_first_and_the_patch_below(query, tmp_path):
    answer = lookup(query, db=str(tmp_path / "none.db"), offline=True)
    assert answer.match is not None and answer.match.family == "sdxl"
    kinds = [r.route or r.kind for r in [answer.recommendation, *answer.alternatives]]
    assert kinds[0] == "controlnet-union-promax" and kinds.index("official") < kinds.index("fooocus-inpaint")
    assert lookup("SDXL 1.0", db=str(tmp_path / "none.db"), offline=True).recommendation.route == "fooocus-inpaint"


def test_a_distilled_base_model_string_is_a_marker_too():
    assert "distilled" in routes.markers_of("plain name", "SDXL Turbo", [], "sdxl")
    assert routes.markers_of("HyperRealism XL", "SDXL 1.0", [], "sdxl") == {}  # a word, not a prefix


def test_pony_builds_first_and_the_fooocus_patch_falls_for_its_pony_report():
    rec, alts, _ = ladder.recommend(ladder.Subject("Pony Realism", "pony"))
    assert rec.kind == "build"
    order = [a.route or a.kind for a in alts]
    assert order.index("official") > order.index("lanpaint")  # SDXL's official model is far from Pony
    assert order[-1] == "fooocus-inpaint"
    assert any("Pony-based" in e for e in alts[-1].evidence if e.startswith("known trouble"))
    brushnet = next(a for a in alts if a.route == "brushnet")  # SDXL's score, Pony's penalty
    assert any("PonyXL" in e for e in brushnet.evidence)


def test_illustrious_prefers_the_noobai_inpainting_controlnet_then_promax_over_the_patch():
    assert _ids("illustrious")[:3] == ["noobai-inpainting", "controlnet-union-promax", "fooocus-inpaint"]
    assert _ids("noobai")[:2] == ["noobai-inpainting", "controlnet-union-promax"]


def test_a_v_prediction_noobai_model_weighs_down_epsilon_routes():
    marks = routes.markers_of("NoobAI-XL V-Pred 1.0", None, [], "noobai")
    assert marks == {"v-prediction": "its name says 'v-pred'"}
    rec, alts, _ = ladder.recommend(ladder.Subject("NoobAI-XL V-Pred 1.0", "noobai"))
    official = next(a for a in alts if a.kind == "official")
    assert official.score == 15 and any("predict epsilon" in e for e in official.evidence)
    assert _ids("noobai", marks)[-1] == "brushnet"
    build = next(a for a in alts if a.kind == "build")
    assert build.score == routes.checkpoint_weight("build", "noobai", {})[0] - 10
    assert any("v_pred/ztsnr markers" in e for e in build.evidence)
    assert rec.route == "noobai-inpainting"  # the build's penalty puts the ControlNets ahead
    assert [a.route for a in alts[:1]] == ["controlnet-union-promax"]


def test_the_header_marker_and_a_v_family_count_as_v_prediction():
    assert "v-prediction" in routes.markers_of("x", None, ["v_pred"], "sdxl")
    assert routes.markers_of("x", None, [], "sd2-768") == {"v-prediction": "Stable Diffusion 2.x (768, v-prediction) "
                                                                           "predicts v"}  # fmt: skip


def test_families_without_an_inpainting_checkpoint_get_their_best_route_not_none():
    sd3, _, _ = ladder.recommend(ladder.Subject("SD 3.5 fine-tune", "sd3"))
    assert sd3.kind == "controlnet" and sd3.route == "sd3-controlnet-inpainting"
    kolors, _, _ = ladder.recommend(ladder.Subject("a Kolors model", "kolors"))
    assert kolors.kind == "fill-model" and kolors.route == "kolors-inpainting"
    hunyuan, _, _ = ladder.recommend(ladder.Subject("a Hunyuan model", "hunyuan"))
    assert hunyuan.kind == "sampler"  # only the model-agnostic methods serve it
    unknown, alts, _ = ladder.recommend(ladder.Subject("mystery", None, base_model="Weird 9"))
    assert unknown.kind == "none" and alts == []


def test_flux_keeps_its_fill_model_first():
    rec, alts, _ = ladder.recommend(ladder.Subject("a FLUX.1 dev fine-tune", "flux1"))
    assert rec.kind == "official" and rec.target.repo == "black-forest-labs/FLUX.1-Fill-dev"
    assert any("FluxFillPipeline" in h for h in rec.how)
    kontext = next(a for a in alts if a.route == "flux-kontext")
    assert any(e.startswith("gated") for e in kontext.evidence)


def test_the_models_own_release_still_comes_first():
    subject = ladder.Subject("XL Fan", "sdxl", model_id="civitai:1", version_id="civitai:v1")
    rec, alts, _ = ladder.recommend(subject, releases("XL Fan", {"v1": 0.9}))
    assert rec.kind == "own-release" and rec.for_your_version
    assert alts[0].route == "fooocus-inpaint" and "better than" not in alts[0].reason


# -- JSON and the panel ---------------------------------------------------------------------------------------


def test_json_alternatives_carry_kind_target_how_and_reason(tmp_path):
    out = run_cli("lookup", "SDXL 1.0", "--offline", "--json", env=cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "r.db")))
    answer = json.loads(out.stdout)
    alts = answer["alternatives"]
    promax = next(a for a in alts if a["route"] == "controlnet-union-promax")
    assert promax["kind"] == "controlnet" and promax["target"]["repo"] == "xinsir/controlnet-union-sdxl-1.0"
    assert promax["how"] and promax["reason"] and isinstance(promax["score"], int)
    assert len([a for a in alts if a["route"]]) == len(_ids("sdxl")) - 1  # every route, the first one answered


def test_the_answer_fits_a_screen_and_all_shows_every_alternative_in_full(tmp_path):
    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "r.db"), COLUMNS="80")
    text = run_cli("lookup", "SD 1.5", "--offline", env=env).stdout
    assert len(text.splitlines()) <= 25 and text.startswith("Stable Diffusion 1.x  [sd1]")
    assert "Use the official Stable Diffusion 1.x inpainting model." in text and "also: build an inpainting" in text
    assert text.count("Use the official") == 1  # said once, not as a title and again as its reason
    assert "ControlNet 1.1 inpaint" in text and "BrushNet" in text and "--all" in text
    assert text.count("resumed from SD 1.2") == 1  # a caveat once
    full = run_cli("lookup", "SD 1.5", "--offline", "--all", env=env).stdout
    assert "Alternative: Build an inpainting version" in full and "PowerPaint" in full
    assert "inpaint-advisor merge --inpaint" in full  # the raw merge, in full


@pytest.mark.parametrize("columns", [60, 80, 120])
@pytest.mark.parametrize("show_all", [False, True], ids=["answer", "all"])
def test_every_printed_command_copies_whole_at_any_width(tmp_path, columns, show_all):
    """Each command is one line of its own, whatever the width: joined as printed and split as a shell would,
    it is the JSON's argv."""
    import json
    import shlex

    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "r.db"), COLUMNS=str(columns))
    args = ["lookup", "SDXL 1.0", "--offline", *(["--all"] if show_all else [])]
    printed = [ln.split("$ ", 1)[1] for ln in run_cli(*args, env=env).stdout.splitlines() if "$ " in ln]
    answer = json.loads(run_cli("lookup", "SDXL 1.0", "--offline", "--json", env=env).stdout)
    recs = [answer["recommendation"], *answer["alternatives"]] if show_all else [answer["recommendation"]]
    known = [c["argv"] for r in recs for c in [*r["downloads"], r["command"], r["run"]] if c]
    assert printed and all(shlex.split(p) in known for p in printed), printed
    assert max(len(p) for p in printed) > 60  # longer than the narrowest screen, and still whole


@pytest.mark.parametrize("columns", [60, 80])
def test_every_url_of_the_full_view_copies_whole(tmp_path, columns):
    """--all prints each alternative's page, download and sources after its panel, one whole URL a line: none is
    folded inside a border."""
    import json
    import re

    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "r.db"), COLUMNS=str(columns))
    text = run_cli("lookup", "SDXL 1.0", "--offline", "--all", env=env).stdout
    answer = json.loads(run_cli("lookup", "SDXL 1.0", "--offline", "--json", env=env).stdout)
    sources = {e.removeprefix("source: ") for r in [answer["recommendation"], *answer["alternatives"]]
               for e in r["evidence"] if e.startswith("source: ")}  # fmt: skip
    printed = set(re.findall(r"^  source (\S+)$", text, re.M))
    assert sources and sources == printed
    assert max(len(u) for u in printed) > columns  # a URL longer than the screen, and still whole
    assert "│ https://" not in text and "· source:" not in text


# -- the Hub crawl checks the routes' files --------------------------------------------------------------------


def test_the_hub_crawl_checks_route_files_and_lookup_says_when_one_is_gone(registry_db, serve):
    from crawler import hf
    from crawler import registry as registry_layer
    from crawler.http import RetryPolicy
    from tests.hf_fake import ExactFile, FakeHub, FakeRepo, fixture_hub

    sha = DATA["routes"][0]["files"][0]["sha256"]
    fooocus = FakeRepo("lllyasviel/fooocus_inpaint", files={"inpaint_v26.fooocus.patch": ExactFile(1_323_362_033, sha)})
    promax = FakeRepo("xinsir/controlnet-union-sdxl-1.0", files={"config_promax.json": ExactFile(1260, None)})
    url = serve(FakeHub([*fixture_hub(), fooocus, promax]))  # the head file and the promax weights: gone
    summary = hf.crawl(registry_layer.open(registry_db), endpoint=url,
                       policy=RetryPolicy(attempts=2, base_delay=0.001), sleep=lambda s: None)  # fmt: skip
    assert "lllyasviel/fooocus_inpaint/fooocus_inpaint_head.pth" in summary.route_files_missing
    assert "lllyasviel/fooocus_inpaint/inpaint_v26.fooocus.patch" not in summary.route_files_missing
    reader = registry_layer.open(registry_db, "lookup")
    try:
        checks = reader.route_checks()
    finally:
        reader.close()
    patch = checks[("lllyasviel/fooocus_inpaint", "inpaint_v26.fooocus.patch")]
    assert patch.matches and patch.size == 1_323_362_033 and patch.sha256 == sha
    answer = lookup("xlfan/no-card", db=registry_db, offline=True)  # an SDXL fine-tune the crawl found
    rec = answer.recommendation
    assert rec.route == "fooocus-inpaint" and rec.target.size == 1_323_362_033  # the size the Hub reported
    assert any("fooocus_inpaint_head.pth was not on the Hub" in e for e in rec.evidence)
    promax_rec = next(a for a in answer.alternatives if a.route == "controlnet-union-promax")
    assert any("diffusion_pytorch_model_promax.safetensors was not on the Hub" in e for e in promax_rec.evidence)


def test_a_mirror_serving_another_file_is_passed_over_for_one_that_serves_the_pinned_one():
    from crawler.registry import OfficialState

    spec = {"mirrors": [{"repo": "first/mirror", "alive": True}, {"repo": "second/mirror", "alive": True}]}
    checks = {"first/mirror": OfficialState(True, False, "2026-12-01 00:00:00", "sha256 differs"),
              "second/mirror": OfficialState(True, True, "2026-12-01 00:00:00", "ok")}  # fmt: skip
    repo, note = ladder.live_mirror(spec, checks)
    assert repo == "second/mirror" and note and "serving another file" in note


def test_a_build_answer_carries_the_one_command_that_does_it_all():
    subject = ladder.Subject("Pony Mix v6", "pony", model_id="civitai:5", version_id="civitai:v6")
    rec, alts, _ = ladder.recommend(subject)
    build = next(r for r in [rec, *alts] if r.kind == "build")
    assert build.run is not None and build.run.argv == ["inpaint-advisor", "build", "--", "civitai:5@6"]
    assert build.command.argv[:2] == ["inpaint-advisor", "merge"]  # the raw merge stays, for --all and --json
    local = ladder.recommend(ladder.Subject("-odd.safetensors", "sd1", file="-odd.safetensors", local=True))
    built = next(r for r in [local[0], *local[1]] if r.kind == "build")
    assert built.run.argv == ["inpaint-advisor", "build", "--", "-odd.safetensors"]  # a name is never an option
