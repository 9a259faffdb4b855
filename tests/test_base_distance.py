"""A fine-tune's distance from its base, measured where both files are at hand, weighs the official model
against a build (docs/routes.md, "Judgment"): far from the base, a build first; close to it, the official
model, whatever a name word or tag says of a style; no base at hand, names and tags as before."""

import hashlib
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from advisor.advice import ladder
from advisor.advice.lookup import lookup
from merge.distance import BaseDistance, base_distance
from tests.sd_layouts import write_checkpoint

BASE = "v1-5-pruned-emaonly.safetensors"  # SD 1.5's official base, as data/families.json names its file


def _fine_tune(base_path, path, drift: float, seed: int = 1, dtype=torch.float16) -> None:
    """The base with every UNet tensor moved by ``drift`` of its own norm (random direction)."""
    g = torch.Generator().manual_seed(seed)
    sd = load_file(str(base_path))
    for k, v in sd.items():
        if k.startswith("model.diffusion_model.") and v.is_floating_point():
            noise = torch.randn(v.shape, generator=g)
            scale = drift * v.float().norm() / max(noise.norm(), 1e-12)
            sd[k] = (v.float() + noise * scale).to(dtype)
    save_file(sd, str(path))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A checkpoints folder holding a tiny SD 1.5 base under the official name, taken for the base: the data's
    size and SHA256 of the official file are made this one's (the checks have tests of their own)."""
    from advisor.local import base_distance as where

    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "checkpoints"
    models.mkdir()
    write_checkpoint(models / BASE, "sd1", "normal", seed=5)
    real, size = where._base_spec, (models / BASE).stat().st_size
    sha256 = hashlib.sha256((models / BASE).read_bytes()).hexdigest()
    monkeypatch.setattr(where, "_base_spec",
                        lambda family: {**real(family), "size": size, "sha256": sha256} if real(family) else None)
    return models


@pytest.mark.parametrize("drift", [0.0, 0.02, 0.2])
def test_the_sampled_distance_is_the_drift(folder, tmp_path, drift):
    _fine_tune(folder / BASE, tmp_path / "b.safetensors", drift, dtype=torch.float32)
    d = base_distance(tmp_path / "b.safetensors", folder / BASE, budget=512 * 1024)  # a sample, not every tensor
    assert d is not None and d.tensors > 600 and d.base == BASE  # a slice of every UNet tensor
    assert d.relative == pytest.approx(drift, abs=0.01 + drift * 0.05)


def test_a_drift_in_a_few_layers_is_not_missed(folder, tmp_path):
    """Fine-tunes move the cross-attention's to_k/to_v most: a sample of whole tensors can miss them all."""
    sd = load_file(str(folder / BASE))
    g = torch.Generator().manual_seed(3)
    for k, v in sd.items():
        if "attn2.to_k" in k or "attn2.to_v" in k:
            sd[k] = (v.float() * 1.5 + torch.randn(v.shape, generator=g) * v.float().std()).to(v.dtype)
    save_file(sd, str(tmp_path / "b.safetensors"))
    whole = base_distance(tmp_path / "b.safetensors", folder / BASE, budget=2**40)
    sampled = base_distance(tmp_path / "b.safetensors", folder / BASE, budget=256 * 1024)
    assert whole.relative > 0.05 and sampled.relative == pytest.approx(whole.relative, rel=0.25)


def test_what_headers_claim_does_not_size_the_read(tmp_path, monkeypatch):
    """Two sparse files whose headers claim a 1 GiB tensor: the slice read of it stays within the budget."""
    import os as os_module

    from tests.hf_fake import safetensors_header

    shapes = {f"model.diffusion_model.block.{i}.weight": (8, 8) for i in range(20)}
    shapes["model.diffusion_model.huge.weight"] = (2**15, 2**14)  # 1 GiB of fp16
    for name in ("b", "c"):
        header = safetensors_header(shapes)
        with open(tmp_path / f"{name}.safetensors", "wb") as f:
            f.write(header)
            f.truncate(len(header) + sum(2 * a * b for a, b in shapes.values()))
    reads = []
    real = os_module.pread
    monkeypatch.setattr(os_module, "pread", lambda fd, n, at: reads.append(n) or real(fd, n, at))
    base_distance(tmp_path / "b.safetensors", tmp_path / "c.safetensors", budget=64 * 1024)
    assert max(reads) <= 64 * 1024 and sum(reads) <= 2 * 2 * 64 * 1024


def test_bf16_and_files_of_another_architecture(folder, tmp_path):
    _fine_tune(folder / BASE, tmp_path / "b.safetensors", 0.1, dtype=torch.bfloat16)
    assert base_distance(tmp_path / "b.safetensors", folder / BASE).relative == pytest.approx(0.1, abs=0.01)
    write_checkpoint(tmp_path / "xl.safetensors", "sdxl", "normal", seed=2)
    assert base_distance(tmp_path / "xl.safetensors", folder / BASE) is None  # no UNet tensor of one shape


def _kinds(result) -> list[str]:
    return [result.recommendation.kind, *(a.kind for a in result.alternatives)]


def test_far_from_its_base_a_build_comes_before_the_official_model(folder):
    _fine_tune(folder / BASE, folder / "myPhotoMix_v3.safetensors", 0.2)
    result = lookup(str(folder / "myPhotoMix_v3.safetensors"), db=str(folder / "none.db"), offline=True)
    kinds = _kinds(result)
    assert kinds.index("build") < kinds.index("official")
    official = next(a for a in [result.recommendation, *result.alternatives] if a.kind == "official")
    assert any("far from the base" in e and BASE in e for e in official.evidence)
    assert result.distance.relative == pytest.approx(0.2, abs=0.02) and result.distance.base == BASE


def test_a_file_named_like_the_base_without_its_size_is_not_the_base(tmp_path, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    write_checkpoint(tmp_path / BASE, "sd1", "normal", seed=5)  # the official name, not the official size
    _fine_tune(tmp_path / BASE, tmp_path / "far.safetensors", 0.3)
    result = lookup(str(tmp_path / "far.safetensors"), db=str(tmp_path / "none.db"), offline=True)
    assert result.distance is None and result.recommendation.kind == "official"


def test_a_measurement_is_kept_and_shown_by_scan(folder, monkeypatch):
    from advisor.local import base_distance as where
    from advisor.local.scan import scan

    _fine_tune(folder / BASE, folder / "myPhotoMix_v3.safetensors", 0.2)
    (first,) = [c for c in scan([folder], db=str(folder / "none.db"), offline=True)[0].checkpoints
                if c.path.endswith("myPhotoMix_v3.safetensors")]  # fmt: skip
    assert first.distance.relative == pytest.approx(0.2, abs=0.02)
    assert f"Its UNet measured {first.distance}." in first.partner.reason
    monkeypatch.setattr(where, "base_distance", lambda *a, **k: pytest.fail("measured again"))
    assert where.measure(folder / "myPhotoMix_v3.safetensors", "sd1") == first.distance
    from advisor.build.cache import clear

    assert str(where.kept_dir()) in clear("all").removed and not where.kept_dir().exists()


def test_a_file_hashed_here_as_another_than_the_official_base_is_not_the_base(folder, monkeypatch):
    from advisor.local import base_distance as where
    from merge.hashing import file_hashes

    _fine_tune(folder / BASE, folder / "far.safetensors", 0.3)
    real = where._base_spec
    monkeypatch.setattr(where, "_base_spec", lambda family: {**real(family), "sha256": "AB" * 32})
    assert where.measure(folder / "far.safetensors", "sd1") is not None  # not hashed here: taken at its word
    file_hashes(folder / BASE)  # a scan hashed it: its SHA256 is not the official file's
    assert where.measure(folder / "far.safetensors", "sd1") is None


def test_close_to_its_base_the_official_model_stays_first_whatever_its_name_says(folder):
    _fine_tune(folder / BASE, folder / "anime_mix_v1.safetensors", 0.01)  # "anime": a stylized word
    result = lookup(str(folder / "anime_mix_v1.safetensors"), db=str(folder / "none.db"), offline=True)
    assert result.recommendation.kind == "official"
    evidence = result.recommendation.evidence
    assert any(e.startswith("its UNet measured 1.") and "close to the base" in e for e in evidence)


def test_without_the_base_at_hand_names_decide_and_nothing_is_measured(folder):
    _fine_tune(folder / BASE, folder / "anime_mix_v1.safetensors", 0.01)
    os.remove(folder / BASE)
    result = lookup(str(folder / "anime_mix_v1.safetensors"), db=str(folder / "none.db"), offline=True)
    kinds = _kinds(result)
    assert kinds.index("build") < kinds.index("official")  # the name's "anime", as before
    assert not any("measured" in e for a in [result.recommendation, *result.alternatives] for e in a.evidence)
    assert result.distance is None


def test_a_base_in_the_build_cache_is_used(folder, tmp_path):
    from advisor.local.cached_files import hub_file_path

    cached = hub_file_path("stable-diffusion-v1-5/stable-diffusion-v1-5", BASE)
    cached.parent.mkdir(parents=True)
    os.replace(folder / BASE, cached)
    _fine_tune(cached, tmp_path / "far.safetensors", 0.3)
    result = lookup(str(tmp_path / "far.safetensors"), db=str(folder / "none.db"), offline=True)
    assert _kinds(result).index("build") < _kinds(result).index("official")


def test_the_ladder_weighs_a_measured_distance_without_files():
    def first(distance, tags):
        return ladder.recommend(ladder.Subject("Mix", "sd1", tags=tags, distance=distance))[0].kind

    far, near, middle = (BaseDistance(r, BASE, 40) for r in (0.25, 0.01, 0.06))
    assert first(None, []) == "official" and first(None, ["anime"]) == "build"
    assert first(far, []) == "build" and first(near, ["anime"]) == "official"
    assert first(middle, ["anime"]) == "build" and first(middle, []) == "official"  # between: tags decide
