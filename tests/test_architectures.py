"""Today's transformer architectures told from tensor names and shapes (data/architectures.json, from ComfyUI's
model_detection.py): each family, the look-alikes that share keys (FLUX.1, FLUX.2 and Chroma; Qwen-Image,
Mage-Flow and Lens; Lumina and Z-Image; HiDream and HiDream-O1), both key formats (a diffusion model alone and
ComfyUI's full checkpoint), diffusers folders by class, video transformers named as such; and scan answering
for such a file by what it is, whatever its name."""

import json
from pathlib import Path

import pytest

from merge.header import TensorInfo
from merge.layout import detect, from_diffusers_config
from tests.hf_fake import safetensors_header


def _write(path, shapes: dict) -> None:
    """A whole safetensors file of these bf16 tensors (zeros): a scan checks that the data is all there."""
    size = 0
    for shape in shapes.values():
        n = 2
        for d in shape:
            n *= d
        size += n
    path.write_bytes(safetensors_header(shapes, "BF16") + b"\0" * size)


def _t(shape=(8, 8)) -> TensorInfo:
    return TensorInfo("BF16", tuple(shape))


KEY_NORM = "double_blocks.0.img_attn.norm.key_norm.scale"
# what each architecture's checkpoints hold (a few of their keys, with the shapes that tell look-alikes apart)
FILES = {
    "flux1": {KEY_NORM: (128,), "img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096),
              "single_blocks.0.linear1.weight": (8, 8)},
    "flux1-fill": {KEY_NORM: (128,), "img_in.weight": (3072, 384), "txt_in.weight": (3072, 4096)},
    "flux2": {KEY_NORM: (128,), "img_in.weight": (6144, 128), "txt_in.weight": (6144, 15360),
              "double_stream_modulation_img.lin.weight": (8, 8)},
    "flux2-klein-4b": {KEY_NORM: (128,), "img_in.weight": (3072, 128), "txt_in.weight": (3072, 7680),
                       "double_stream_modulation_img.lin.weight": (8, 8)},
    "flux2-klein-9b": {KEY_NORM: (128,), "img_in.weight": (4096, 128), "txt_in.weight": (4096, 12288),
                       "double_stream_modulation_img.lin.weight": (8, 8)},
    "chroma": {KEY_NORM: (128,), "img_in.weight": (3072, 64), "distilled_guidance_layer.norms.0.scale": (5120,)},
    "qwen-image": {"txt_norm.weight": (3584,), "proj_out.weight": (64, 3072), "img_in.weight": (3072, 64),
                   "transformer_blocks.0.img_mod.1.weight": (8, 8)},
    "mage-flow": {"txt_norm.weight": (2560,), "proj_out.weight": (128, 2048),
                  "transformer_blocks.0.attn.to_q.weight": (8, 8)},
    "lens": {"txt_norm.weight": (2048,), "img_in.weight": (1536, 64), "proj_out.weight": (256, 1536),
             "transformer_blocks.0.attn.norm_added_q.weight": (64,), "transformer_blocks.0.img_mlp.w1.weight": (8, 8)},
    "z-image": {"cap_embedder.1.weight": (3840, 2560), "noise_refiner.0.attention.k_norm.weight": (128,),
                "layers.0.attention.qkv.weight": (8, 8)},
    "lumina": {"cap_embedder.1.weight": (2304, 2304), "noise_refiner.0.attention.k_norm.weight": (96,)},
    "hidream": {"caption_projection.0.linear.weight": (2560, 4096),
                "double_stream_blocks.0.block.attn1.to_q.weight": (8, 8)},
    "hidream-o1": {"t_embedder1.mlp.0.weight": (8, 8), "x_embedder.proj1.weight": (8, 8),
                   "caption_projection.0.linear.weight": (8, 8)},
    "anima": {"blocks.0.mlp.layer1.weight": (8192, 2048), "llm_adapter.blocks.0.cross_attn.q_proj.weight": (8, 8),
              "x_embedder.proj.1.weight": (2048, 68)},
    "sd3": {"joint_blocks.0.context_block.attn.qkv.weight": (4608, 1536), "x_embedder.proj.weight": (1536, 16, 2, 2)},
    "auraflow": {"double_layers.0.attn.w1q.weight": (8, 8)},
    "hunyuan": {"mlp_t5.0.weight": (8, 8)},
    "pixart": {"t_block.1.weight": (8, 8)},
    "boogu": {"double_stream_layers.0.img_instruct_attn.processor.img_to_q.weight": (8, 8)},
    "ideogram4": {"embed_image_indicator.weight": (8, 8)},
    "krea2": {"txtfusion.projector.weight": (8, 8)},
    "ernie-image": {"layers.0.mlp.linear_fc2.weight": (8, 8)},
}  # fmt: skip


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("name", sorted(FILES))
def test_each_architecture_is_told_from_its_tensors_in_both_key_formats(name, prefix):
    lo = detect({prefix + k: _t(shape) for k, shape in FILES[name].items()})
    family, variant = ("flux1", "fill") if name == "flux1-fill" else (name, "normal")
    assert (lo.family, lo.variant, lo.media) == (family, variant, "image")
    assert "unknown" not in lo.label


def test_video_transformers_are_named_and_set_aside_by_a_scan(tmp_path):
    from advisor.local.scan import scan

    wan = {"head.modulation": (1, 6, 5120), "blocks.0.ffn.0.weight": (8, 8), "patch_embedding.weight": (8, 16, 1, 2, 2)}
    lo = detect({k: _t(s) for k, s in wan.items()})
    assert (lo.family, lo.media, lo.label) == (None, "video", "a video model (Wan)")
    models = tmp_path / "models"
    models.mkdir()
    _write(models / "not-an-image-model.safetensors", wan)
    (r,) = scan([models], db=str(tmp_path / "none.db"), offline=True)
    assert r.checkpoints == [] and "a video model (Wan): not an image checkpoint" in r.skipped[0].reason


def test_a_file_named_like_nothing_is_answered_by_what_its_tensors_are(tmp_path):
    from advisor.local.scan import scan

    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    folder = root / "models" / "diffusion_models"
    folder.mkdir(parents=True)
    _write(folder / "model_v3_final.safetensors", FILES["qwen-image"])
    (r,) = scan([root], db=str(tmp_path / "none.db"), offline=True)
    (found,) = r.checkpoints
    assert found.family == "qwen-image" and found.partner.kind == "controlnet"  # Qwen-Image's inpainting ControlNet
    assert "Qwen-Image" in found.partner.reason


@pytest.mark.parametrize("cls, family", [
    ("QwenImageTransformer2DModel", "qwen-image"), ("ZImageTransformer2DModel", "z-image"),
    ("Flux2Transformer2DModel", "flux2"), ("ChromaTransformer2DModel", "chroma"),
    ("HiDreamImageTransformer2DModel", "hidream"), ("SD3Transformer2DModel", "sd3"),
    ("WanTransformer3DModel", None),
])  # fmt: skip
def test_a_diffusers_transformer_is_told_by_its_class(cls, family):
    got, variant, _ = from_diffusers_config(json.loads(json.dumps({"_class_name": cls, "in_channels": 64})),
                                            transformer=True)  # fmt: skip
    assert got == family and variant == ("normal" if family else None)


def test_a_unet_checkpoint_is_never_taken_for_a_transformer():
    from tests.sd_layouts import checkpoint_shapes

    for fam in ("sd1", "sd2", "sdxl"):
        shapes = checkpoint_shapes(fam, "inpaint", scale=8)
        tensors = {k: TensorInfo("I64", s[1]) if s and s[0] == "int64" else _t(s) for k, s in shapes.items()}
        lo = detect(tensors)
        assert (lo.family, lo.variant, lo.media) == (fam, "inpaint", "image")


def test_a_transformers_controlnet_is_set_aside_and_a_stray_key_does_not_overrule_a_unet(tmp_path):
    from advisor.local.scan import not_a_checkpoint
    from tests.sd_layouts import checkpoint_shapes

    cn = {"txt_norm.weight": (3584,), "img_in.weight": (3072, 64), "controlnet_blocks.0.weight": (3072, 3072)}
    lo = detect({k: _t(s) for k, s in cn.items()})
    assert "ControlNet" in not_a_checkpoint(list(cn), lo.components, lo.family)  # Qwen-Image's, not a checkpoint
    sd1 = checkpoint_shapes("sd1", "normal", scale=8)
    tensors = {k: TensorInfo("I64", s[1]) if s and s[0] == "int64" else _t(s) for k, s in sd1.items()}
    for stray in ("model.diffusion_model.txt_norm.weight", "clf.1.weight", "model.diffusion_model.head.modulation"):
        lo = detect({**tensors, stray: _t((3584,))})
        assert (lo.family, lo.media) == ("sd1", "image"), stray  # the whole UNet says what the file is


def test_probe_names_a_video_model_and_scan_rereads_verdicts_an_older_release_cached(tmp_path, monkeypatch):
    from advisor.local import probe as probe_module
    from advisor.local import scan as scan_module

    wan = {"head.modulation": (1, 6, 5120), "blocks.0.ffn.0.weight": (8, 8)}
    _write(tmp_path / "clip.safetensors", wan)
    p = probe_module.probe(tmp_path / "clip.safetensors")
    assert (p.family, p.media, p.model, p.prediction) == (None, "video", "Wan", "unknown")
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "models"
    models.mkdir()
    _write(models / "zi.safetensors", FILES["z-image"])
    monkeypatch.setattr(scan_module, "_classifier", lambda: "an-older-release")
    scan_module.scan([models], db=str(tmp_path / "none.db"), offline=True)
    cached = json.loads((tmp_path / "cache" / "scan-probes.json").read_text())
    (entry,) = cached.values()
    entry["aside"], entry["probe"] = "no UNet in it: not a Stable Diffusion checkpoint", None  # what it once said
    (tmp_path / "cache" / "scan-probes.json").write_text(json.dumps(cached))
    monkeypatch.setattr(scan_module, "_classifier", lambda: "this-release")
    (r,) = scan_module.scan([models], db=str(tmp_path / "none.db"), offline=True)
    assert [c.family for c in r.checkpoints] == ["z-image"] and r.skipped == []  # classified again, by this release


def _flux2_folder(root, *, scheduler: str | None = None):
    """A FLUX.2 [klein] 9B diffusers pipeline as the Hub has it: model_index.json and a transformer/ whose
    config says its class and text width (the weights' header-only file is enough to find it)."""
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "Flux2KleinPipeline"}')
    (root / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "Flux2Transformer2DModel", "joint_attention_dim": 12288, "in_channels": 128}))
    _write(root / "transformer" / "diffusion_pytorch_model.safetensors", FILES["flux2-klein-9b"])
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(scheduler)
    return root


def test_scan_answers_for_a_transformer_diffusers_folder(tmp_path):
    from advisor.local.scan import scan

    _flux2_folder(tmp_path / "models" / "FLUX.2-klein-9B")
    (r,) = scan([tmp_path / "models"], db=str(tmp_path / "none.db"), offline=True)
    (found,) = r.checkpoints
    assert found.family == "flux2-klein-9b" and r.skipped == []


def test_a_diffusers_folders_scheduler_that_says_nothing_readable_is_left_aside(tmp_path):
    from advisor.local.probe import probe

    p = probe(_flux2_folder(tmp_path / "a", scheduler="[]"))
    assert (p.family, p.format) == ("flux2-klein-9b", "diffusers")
    flow = probe(_flux2_folder(tmp_path / "b", scheduler='{"prediction_type": "v_prediction"}'))
    assert flow.markers == [] and flow.prediction != "v"  # a flow model's scheduler: not a UNet's v marker


def test_a_config_too_large_to_be_one_is_refused_without_reading_it(tmp_path):
    from merge.checkpoint import MAX_CONFIG, read_config
    from merge.header import CheckpointError

    big = tmp_path / "config.json"
    with open(big, "wb") as f:
        f.truncate(MAX_CONFIG + 1)
    with pytest.raises(CheckpointError, match="too large"):
        read_config(big)


def test_a_transformer_diffusers_folder_given_by_a_relative_path_is_a_local_folder(tmp_path, monkeypatch):
    from advisor.advice.query import parse_query

    folder = tmp_path / "models" / "k9"
    (folder / "transformer").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    q = parse_query("models/k9")  # not the Hub repo "models/k9"
    assert q.kind == "file" and q.path == Path("models/k9")
