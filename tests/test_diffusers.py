"""Diffusers folders read as single-file checkpoints (SDXL's official inpainting model only exists as one)."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from advisor.local.probe import probe
from merge.checkpoint import open_checkpoint
from merge.diffusers_keys import _SD1_ATTN, _SDXL_ATTN, _unet_layer_map, unet_key, vae_key
from merge.engine import merge
from tests.conftest import NO_TORCH_MERGE, ROOT, cli_env, needs_kernel
from tests.diffusers_layout import unet_pairs, vae_pairs, write_diffusers
from tests.sd_layouts import write_checkpoint


@pytest.mark.parametrize("family, attn", [("sd1", _SD1_ATTN), ("sdxl", _SDXL_ATTN)])
def test_unet_names_match_an_independent_walk_of_the_architecture(family, attn):
    layer_map = _unet_layer_map(*attn)
    for hf, sd in unet_pairs(family).items():
        assert unet_key(hf + "weight", layer_map) == sd + "weight", hf


def test_vae_names_match_an_independent_walk():
    for hf, sd in vae_pairs().items():
        assert vae_key(hf + "bias")[0] == sd + "bias", hf


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_diffusers_folder_reads_as_the_same_single_file_tensors(tmp_path, family):
    single = write_checkpoint(tmp_path / "single.safetensors", family, "inpaint", 4)
    folder = tmp_path / "pipeline"
    write_diffusers(folder, single, family)
    with open_checkpoint(folder) as src:
        expected = {k for k in single if not k.endswith(("logit_scale", "position_ids"))}
        assert expected <= set(src.tensors)
        for k in expected:
            assert src.tensors[k].shape == tuple(single[k].shape), k
            assert torch.equal(src.read(k), single[k]), k
    p = probe(folder)
    assert (p.family, p.variant, p.format) == (family, "inpaint", "diffusers")


def test_merge_with_a_diffusers_inpainting_model_as_a(tmp_path, monkeypatch, arithmetic):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    a = write_checkpoint(tmp_path / "a.safetensors", "sdxl", "inpaint", 1)
    write_checkpoint(tmp_path / "b.safetensors", "sdxl", "normal", 2)
    write_checkpoint(tmp_path / "c.safetensors", "sdxl", "normal", 3)
    write_diffusers(tmp_path / "sdxl-inpainting", a, "sdxl")
    merge(
        tmp_path / "sdxl-inpainting", tmp_path / "b.safetensors", tmp_path / "c.safetensors", tmp_path / "d.safetensors"
    )
    merge(
        tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors", tmp_path / "s.safetensors"
    )
    from_folder, from_file = load_file(tmp_path / "d.safetensors"), load_file(tmp_path / "s.safetensors")
    for k, v in from_folder.items():
        assert torch.equal(v, from_file[k]), k
    assert set(from_file) - set(from_folder) <= {
        "conditioner.embedders.1.model.logit_scale",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
    }


@needs_kernel
def test_a_merge_with_an_sdxl_diffusers_folder_as_a_runs_without_torch(tmp_path):
    a = write_checkpoint(tmp_path / "a.safetensors", "sdxl", "inpaint", 1)
    write_checkpoint(tmp_path / "b.safetensors", "sdxl", "normal", 2)
    write_checkpoint(tmp_path / "c.safetensors", "sdxl", "normal", 3)
    write_diffusers(tmp_path / "sdxl-inpainting", a, "sdxl")
    paths = [tmp_path / n for n in ("sdxl-inpainting", "b.safetensors", "c.safetensors", "d.safetensors")]
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    child = subprocess.run([sys.executable, "-c", NO_TORCH_MERGE, *map(str, paths)], capture_output=True, text=True,
                           cwd=ROOT, env=env)  # fmt: skip
    assert child.stdout.strip() == "torch imported: False nonfinite: []", child.stderr  # transpose and cat in C
    key = "conditioner.embedders.1.model.text_projection"
    merged = load_file(paths[3])[key]
    b, c = load_file(paths[1])[key], load_file(paths[2])[key]
    assert torch.equal(merged, (a[key].float() + (b.float() - c.float())).half())
