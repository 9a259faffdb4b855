"""`lookup` and `probe`: every way of naming a model, the recommendation ladder, JSON, offline behaviour."""

import hashlib
import json
import subprocess
import sys

import pytest

from advisor.advice import parse_query
from advisor.advice.lookup import NotFound, lookup
from advisor.local.probe import probe
from crawler import civitai
from crawler import registry as registry_layer
from crawler.http import RetryPolicy
from tests.civitai_fake import FakeCivitai, Server, load_fixture, synthetic_item
from tests.conftest import ROOT, cli_env, option, run_cli
from tests.sd_layouts import write_checkpoint


@pytest.fixture
def registry(filled_registry):
    """A registry crawled from the Civitai fixture (once per worker, then copied)."""

    def crawl(db: str) -> None:
        with Server(FakeCivitai(load_fixture())) as url:
            civitai.crawl(registry_layer.open(db), base_url=url, policy=RetryPolicy(attempts=2, base_delay=0.001))

    return filled_registry("civitai fixture", crawl)[0]


def ask(q, registry, **kw):
    return lookup(q, db=registry, offline=kw.pop("offline", True), **kw)


@pytest.mark.parametrize(
    "query, model_id, version_id",
    [
        ("https://civitai.com/models/43331/majicmix-realistic?modelVersionId=94640", "civitai:43331", "civitai:v94640"),
        ("https://civitai.red/models/43331/majicmix-realistic?modelVersionId=94640", "civitai:43331", "civitai:v94640"),
        ("www.civitai.red/models/43331", "civitai:43331", "civitai:v176425"),  # the other host since April 2026
        ("civitai.com/models/43331", "civitai:43331", "civitai:v176425"),
        ("civitai:4384", "civitai:4384", "civitai:v128713"),
        ("urn:air:sd1:checkpoint:civitai:43331@176425", "civitai:43331", "civitai:v176425"),
        ("7C819B6D13", "civitai:43331", "civitai:v176425"),  # AutoV2
        ("7c819b6d13663ed720c2254f4fe18373107dfef2448d337913c8fc545640881e", "civitai:43331", "civitai:v176425"),
        ("7E28A9D1C4B2", "civitai:43331", "civitai:v176425"),  # AutoV3
        ("EB6FB1F4", "civitai:43331", "civitai:v176425"),  # AutoV1
    ],
)
def test_resolvers_find_the_model_and_version(registry, query, model_id, version_id):
    r = ask(query, registry)
    assert (r.match.model_id, r.match.version_id) == (model_id, version_id)


@pytest.mark.parametrize(
    "query, model_id",
    [
        ("majicmix realistic v7", "civitai:43331"),
        ("MajicMix-Realistic", "civitai:43331"),
        ("majicmix realstic", "civitai:43331"),  # typo
        ("麦橘写实", "civitai:43331"),  # non-Latin
        ("epicphotogasm", "civitai:132632"),  # not its InPainting sibling
        ("Pony Realism", "civitai:372465"),
        ("dreamshaper 8", "civitai:4384"),
    ],
)
def test_fuzzy_text_finds_the_model(registry, query, model_id):
    r = ask(query, registry)
    assert r.match is not None and r.match.model_id == model_id, r.candidates


def test_version_suffix_in_text_selects_the_version(registry):
    assert ask("majicmix realistic v6", registry).match.version_name == "v6"


def test_ambiguous_text_lists_ranked_candidates_instead_of_guessing(registry):
    r = ask("realistc", registry)
    assert r.match is None and r.recommendation is None
    names = [c.name for c in r.candidates]
    assert "CyberRealistic" in names and "majicMIX realistic 麦橘写实" in names
    # listed as the table shows them: by score, the more downloaded first on a tie
    order = [(c.score, c.downloads) for c in r.candidates]
    assert order == sorted(order, reverse=True) and len({c.model_id for c in r.candidates}) == len(order) > 1
    assert "several models match" in r.notes[-1]


def test_ladder_own_release_for_the_same_version(registry):
    r = ask("civitai:43331@176425", registry)
    assert r.recommendation.kind == "own-release"
    assert r.recommendation.target.version_id == "civitai:v221343"
    assert "made for your version" in r.recommendation.reason
    assert any("v7-inpainting" in r.recommendation.target.name for _ in [0])


def test_one_weak_look_alike_is_a_question_not_a_choice(registry):
    r = ask("photon", registry)  # only epiCPhotoGasm comes near, and not near enough to answer for it
    assert r.match is None and [c.name for c in r.candidates] == ["epiCPhotoGasm"]
    assert r.notes[-1].startswith("did you mean epiCPhotoGasm (civitai:")
    shown = run_cli("lookup", "photon", "--offline", env=cli_env(INPAINT_ADVISOR_DB=registry))
    assert shown.returncode == 1 and "Did you mean this model" in shown.stdout and "Several" not in shown.stdout


def test_printed_pages_and_downloads_are_on_the_configured_sites(registry, monkeypatch):
    """What lookup prints and what build fetches come from the same settings: a mirror or a replay of Civitai
    and of the Hub is named in the answer too, not the public sites."""
    monkeypatch.setenv("INPAINT_ADVISOR_CIVITAI_URL", "https://civitai.mirror.example/")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.mirror.example")
    release = ask("civitai:43331@176425", registry).recommendation.target
    assert release.url == "https://civitai.mirror.example/models/43331?modelVersionId=221343"
    assert release.download_url == "https://civitai.mirror.example/api/download/models/221343?fileId=176001"
    family = lookup("SDXL 1.0", db=registry, offline=True)
    urls = [r.target.url for r in [family.recommendation, *family.alternatives] if r.target and r.target.source == "hf"]
    assert urls and all(u.startswith("https://hub.mirror.example/") for u in urls)


def test_a_mirrors_password_is_never_printed(registry, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CIVITAI_URL", "https://user:s3cretpw@civitai.mirror.example")
    release = ask("civitai:43331@176425", registry).recommendation.target
    assert release.url == "https://civitai.mirror.example/models/43331?modelVersionId=221343"
    env = cli_env(INPAINT_ADVISOR_DB=registry, INPAINT_ADVISOR_CIVITAI_URL="https://user:s3cretpw@127.0.0.1:9")
    for offline in (["--offline"], []):  # the answer's URLs, and the note of a mirror that did not answer
        shown = run_cli("lookup", "civitai:43331@176425", *offline, env=env)
        assert "s3cretpw" not in shown.stdout + shown.stderr and "civitai" in shown.stdout.lower()
    missed = run_cli("lookup", "civitai:999999", env=env)
    assert "s3cretpw" not in missed.stdout + missed.stderr and "could not reach" in missed.stderr


def test_ladder_flags_a_release_made_for_another_version(registry):
    r = ask("civitai:43331@94640", registry)  # v6: only v7 has an inpainting release
    assert r.recommendation.kind == "own-release"
    assert "made for a newer version than yours" in r.recommendation.reason


def test_ladder_sibling_model_by_the_same_creator(registry):
    r = ask("civitai:132632", registry)
    assert r.recommendation.kind == "sibling-release"
    assert r.recommendation.target.model_id == "civitai:145523"
    assert any("same creator" in e for e in r.recommendation.evidence)


def test_ladder_builds_for_a_stylized_fine_tune_and_weighs_the_official_model_down(registry):
    r = ask("civitai:107842", registry)  # Aniverse, tagged anime: no inpainting release
    assert r.recommendation.kind == "build"  # the official model would paint the mask in its own, photo look
    official = next(a for a in r.alternatives if a.kind == "official")
    assert official.score < r.recommendation.score
    assert any("stylized model's style is lost" in e and "tagged 'anime'" in e for e in official.evidence)
    assert official.target.repo == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert official.target.sha256 == "c6bbc15e3224e6973459ba78de4998b80b50112b0ae5b5c67113d56b4e366b19"
    build = r.recommendation
    assert build.command.argv[:4] == ["inpaint-advisor", "merge", "--inpaint", "sd-v1-5-inpainting.ckpt"]
    assert option(build.command, "--base") == "v1-5-pruned-emaonly.safetensors"
    assert option(build.command, "--multiplier") == "1.0"


def test_ladder_builds_for_pony_with_a_quality_warning(registry):
    r = ask("civitai:372465", registry)
    assert r.recommendation.kind == "build"
    assert option(r.recommendation.command, "--model") == "ponyRealism_V21.safetensors"
    assert option(r.recommendation.command, "--inpaint") == "stable-diffusion-xl-1.0-inpainting-0.1/"
    assert any("lower quality" in w for w in r.warnings)
    assert any("fp16-fix VAE" in e for e in r.recommendation.evidence)
    kinds = [a.kind for a in r.alternatives]
    assert "official" in kinds and kinds.index("official") > kinds.index("sampler")  # SDXL's model: far for Pony


def test_ladder_already_inpainting_and_none(registry):
    assert ask("civitai:4384@131004", registry).recommendation.kind == "already-inpainting"
    r = ask("civitai:900001", registry)
    assert r.recommendation.kind == "none" and "Hyper Future 9000" in r.recommendation.reason


def test_families_and_base_repos_answer_without_a_registry(tmp_path):
    empty = str(tmp_path / "none.db")
    r = lookup("SDXL 1.0", db=empty, offline=True)
    assert r.match.source == "family" and r.recommendation.kind == "patch"  # SDXL: the Fooocus patch first
    official = next(a for a in r.alternatives if a.kind == "official")
    assert official.target.repo == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    sd3 = lookup("SD 3.5 Large", db=empty, offline=True).recommendation  # no inpainting checkpoint: a route
    assert sd3.kind == "controlnet" and sd3.target.repo == "alimama-creative/SD3-Controlnet-Inpainting"
    hf = lookup("https://huggingface.co/stabilityai/stable-diffusion-2-1", db=empty, offline=True)
    assert hf.match.family == "sd2-768" and any("v-prediction" in w for w in hf.warnings)
    flux = lookup("Flux.1 D", db=empty, offline=True).recommendation
    assert flux.kind == "official" and flux.target.repo == "black-forest-labs/FLUX.1-Fill-dev"
    assert not (tmp_path / "none.db").exists()  # a lookup never creates a registry


def test_local_file_is_classified_and_gets_a_build_command(tmp_path, registry):
    f = tmp_path / "myToon_v2.safetensors"
    write_checkpoint(f, "sdxl", "normal", 5)
    r = ask(str(f), registry)
    assert r.match.source == "file" and r.match.family == "sdxl"
    assert r.recommendation.kind == "patch"
    build = next(a for a in r.alternatives if a.kind == "build")
    assert option(build.command, "--model") == str(f)
    assert option(build.command, "--out") == "myToon_v2-inpainting.safetensors"
    g = tmp_path / "inp.safetensors"
    write_checkpoint(g, "sd1", "inpaint", 5)
    assert ask(str(g), registry).recommendation.kind == "already-inpainting"


def test_unknown_model_is_fetched_live_stored_and_answered(registry, serve):
    item = synthetic_item(777001, __import__("random").Random(3), __import__("datetime").datetime(2025, 1, 1))
    url = serve(FakeCivitai([item]))
    r = lookup("civitai:777001", db=registry, offline=False, civitai_url=url)
    assert r.match.model_id == "civitai:777001" and r.recommendation is not None
    assert lookup("civitai:777001", db=registry, offline=True).match is not None  # stored


def test_unreachable_network_is_one_line_and_bundled_data_still_answers(registry):
    with pytest.raises(NotFound) as unanswered:
        lookup("civitai:999999", db=registry, offline=False, civitai_url="http://127.0.0.1:9")
    assert unanswered.value.code == "network" and str(unanswered.value).startswith("offline: could not reach")
    unsure = lookup("some model name", db=registry, offline=False, civitai_url="http://127.0.0.1:9")  # a search
    assert unsure.match is None and len(unsure.notes) == 1 and unsure.notes[0].startswith("offline: could not")
    assert lookup("SD 1.5", db=registry, offline=False, civitai_url="http://127.0.0.1:9").answered


def test_a_server_that_refuses_the_lookup_is_not_called_offline(registry, serve):
    from tests.civitai_fake import Fault

    refusing = FakeCivitai([])
    refusing.faults = [Fault(401)] * 5
    with pytest.raises(NotFound) as refused:
        lookup("civitai:999999", db=registry, offline=False, civitai_url=serve(refusing))
    why = str(refused.value)
    assert refused.value.code == "no-access" and "refused the lookup (HTTP 401" in why and "CIVITAI_API_TOKEN" in why
    assert not why.startswith("offline")


def test_cli_json_schema_and_exit_codes(registry):
    env = cli_env(INPAINT_ADVISOR_DB=registry)
    ok = run_cli("lookup", "majicmix realistic v7", "--offline", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert set(data) >= {"query", "match", "candidates", "recommendation", "alternatives", "warnings"}
    assert set(data["match"]) >= {"source", "model_id", "version_id", "name", "creator", "base_model", "family",
                                  "is_inpainting"}  # fmt: skip
    rec = data["recommendation"]
    assert rec["kind"] == "own-release" and set(rec) >= {"kind", "target", "command", "reason"}
    assert set(rec["target"]) >= {"model_id", "version_id", "name", "repo", "file", "sha256", "download_url"}
    assert run_cli("lookup", "zzzz qqqq xxxx", "--offline", env=env).returncode == 1
    assert run_cli("lookup", "realistc", "--offline", env=env).returncode == 1
    assert run_cli("lookup", "https://example.com/x", "--offline", env=env).returncode == 2
    human = run_cli("lookup", "majicmix realistic v7", "--offline", env=env)
    assert "Use its creator's inpainting release: majicMIX realistic" in human.stdout
    assert "v7-inpainting" in human.stdout and human.stdout.count("inpainting release") == 1


def test_lookup_does_not_import_torch(registry):
    code = ("import sys; from advisor.cli.main import app\n"
            "try:\n    app(['lookup', 'majicmix realistic v7', '--offline'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'httpx' in sys.modules, 'sqlmodel' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=cli_env(INPAINT_ADVISOR_DB=registry))  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "False False False", out.stderr


def test_query_parser_rejects_what_it_cannot_read():
    with pytest.raises(ValueError):
        parse_query("   ")
    with pytest.raises(ValueError, match="not a Civitai model URL"):
        parse_query("https://civitai.com/user/someone")


@pytest.mark.parametrize(
    "family, variant, channels",
    [("sd1", "normal", 4), ("sd1", "inpaint", 9), ("sd1", "pix2pix", 8), ("sd2", "depth", 5), ("sd2", "inpaint", 9),
     ("sdxl", "normal", 4), ("sdxl", "inpaint", 9)],
)  # fmt: skip
def test_probe_reads_family_and_variant_from_shapes(tmp_path, family, variant, channels):
    f = tmp_path / "m.safetensors"
    write_checkpoint(f, family, variant, 1)
    p = probe(f)
    assert (p.family, p.variant, p.in_channels, p.dtype) == (family, variant, channels, "fp16")
    assert p.params > 0 and p.prediction == "epsilon"


def test_probe_json_and_hashes(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "vpred.safetensors"
    write_checkpoint(f, "sdxl", "normal", 1, extra={"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])})
    result = run_cli("probe", str(f), "--json", "--hash", env=cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "c")))
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("family", "variant", "prediction", "dtype")} == {
        "family": "sdxl", "variant": "normal", "prediction": "v", "dtype": "fp16"}  # fmt: skip
    assert data["params"] > 0 and data["markers"] == ["v_pred", "ztsnr"]
    raw = f.read_bytes()
    sha = hashlib.sha256(raw).hexdigest().upper()
    start = 8 + int.from_bytes(raw[:8], "little")
    assert data["sha256"] == sha and data["autov2"] == sha[:10]
    assert data["autov3"] == hashlib.sha256(raw[start:]).hexdigest()[:12].upper()


def test_probe_refuses_garbage_clearly(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"<html>rate limited</html>")
    r = run_cli("probe", str(f))
    assert r.returncode == 1 and "not a safetensors file" in r.stderr


def test_help_and_unusual_arguments_go_through_the_full_cli(registry):
    env = cli_env(INPAINT_ADVISOR_DB=registry)
    helped = run_cli("lookup", "--help", env=env)
    assert helped.returncode == 0 and "recommendation" not in helped.stderr and "Examples" in helped.stdout
    missing = run_cli("lookup", env=env)
    assert missing.returncode == 2 and "Missing argument" in missing.stderr
    assert run_cli("lookup", "--db", registry, "civitai:4384", "--offline", env=env).returncode == 0


@pytest.mark.parametrize("query", ["DreamShaper SDXL", "epicphotogasm pony"])
def test_a_family_word_keeps_look_alikes_of_other_families_out(registry, query):
    """"DreamShaper SDXL" is not the SD 1.5 DreamShaper: the registry lacks it, so the answer says so (and a live
    lookup asks Civitai) instead of answering for the SD 1.5 model."""
    r = ask(query, registry)
    assert r.match is None and r.candidates == []
    assert any("look-alikes in the registry are of other families than" in n for n in r.notes), r.notes
    listed = ask("cyberrealistic xl", registry)  # a weak SDXL-lineage look-alike may be offered, the SD 1.5 one never
    assert listed.match is None and all(c.family != "sd1" for c in listed.candidates)


def test_a_family_word_in_the_models_own_name_is_its_name(registry):
    assert ask("Flux Fusion", registry).match.model_id == "civitai:" + next(
        str(i["id"]) for i in load_fixture() if i["name"] == "Flux Fusion")
    assert ask("dreamshaper sd15", registry).match.name == "DreamShaper"  # the family it is: answered
    assert ask("pony realism", registry).match.family == "pony"


def test_a_family_word_finds_the_model_live_when_the_registry_lacks_it(registry, serve, monkeypatch):
    import datetime
    import random

    item = synthetic_item(990001, random.Random(1), datetime.datetime(2025, 1, 1))
    item["name"] = "CyberRealistic XL"
    for v in item["modelVersions"]:
        v["baseModel"] = "SDXL 1.0"
    url = serve(FakeCivitai([item]))
    r = lookup("cyberrealistic xl", db=registry, civitai_url=url)
    assert r.match is not None and r.match.model_id == "civitai:990001" and r.match.family == "sdxl"
