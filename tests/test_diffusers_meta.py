"""Checkpoints as diffusers' own model classes make them: each class instantiated on the meta device (no memory,
no weights) with the configs its models publish, written as a diffusers folder of header-only (sparse) files,
then read back by probe and by the merge's folder reader. What this proves that tests/diffusers_layout.py
cannot: the key names and shapes are diffusers' real ones, not a walk of the architecture written here.

Configs: the published unet/config.json and transformer/config.json of each model (their values that differ
from the class defaults), FLUX.2's from diffusers' scripts/convert_flux2_to_diffusers.py (data/architectures.json
names the commit)."""

import json

import pytest

from advisor.local.probe import probe
from merge.checkpoint import open_checkpoint
from tests.hf_fake import safetensors_header
from tests.sd_layouts import SPECS, UNET, unet_shapes, vae_shapes

diffusers = pytest.importorskip("diffusers", reason="diffusers is a dev dependency (pip install -e .[dev])")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers' own deprecations, inside it
torch = pytest.importorskip("torch")

SD1 = {"cross_attention_dim": 768, "attention_head_dim": 8}  # runwayml/stable-diffusion-v1-5
SD2 = {"cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True}
SDXL = {"cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20], "use_linear_projection": True,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10],
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816}  # stabilityai/stable-diffusion-xl-base-1.0  # fmt: skip
UNETS = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}
VARIANTS = {4: "normal", 9: "inpaint"}

FLUX2 = {"patch_size": 1, "in_channels": 128, "attention_head_dim": 128, "timestep_guidance_channels": 256,
         "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000, "eps": 1e-6}  # fmt: skip
# (class, config, family, variant): the transformers whose families this tool answers for
TRANSFORMERS = {
    "FLUX.1 [dev]": ("FluxTransformer2DModel", {"guidance_embeds": True}, "flux1", "normal"),
    "FLUX.1 Fill [dev]": ("FluxTransformer2DModel", {"guidance_embeds": True, "in_channels": 384, "out_channels": 64},
                          "flux1", "fill"),
    "FLUX.2 [dev]": ("Flux2Transformer2DModel", {**FLUX2, "num_layers": 8, "num_single_layers": 48,
                                                 "num_attention_heads": 48, "joint_attention_dim": 15360},
                     "flux2", "normal"),
    "FLUX.2 [klein] 4B": ("Flux2Transformer2DModel", {**FLUX2, "num_layers": 5, "num_single_layers": 20,
                                                      "num_attention_heads": 24, "joint_attention_dim": 7680,
                                                      "guidance_embeds": False}, "flux2-klein-4b", "normal"),
    "FLUX.2 [klein] 9B": ("Flux2Transformer2DModel", {**FLUX2, "num_layers": 8, "num_single_layers": 24,
                                                      "num_attention_heads": 32, "joint_attention_dim": 12288,
                                                      "guidance_embeds": False}, "flux2-klein-9b", "normal"),
    "SD 3.5 Medium": ("SD3Transformer2DModel", {"num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24,
                                                "joint_attention_dim": 4096, "caption_projection_dim": 1536,
                                                "pos_embed_max_size": 384, "dual_attention_layers": list(range(13)),
                                                "qk_norm": "rms_norm"}, "sd3", "normal"),
    "Chroma": ("ChromaTransformer2DModel", {}, "chroma", "normal"),
    "Z-Image Turbo": ("ZImageTransformer2DModel", {}, "z-image", "normal"),
    "Qwen-Image": ("QwenImageTransformer2DModel", {}, "qwen-image", "normal"),
}  # fmt: skip


def _meta_shapes(cls_name: str, config: dict) -> tuple[dict[str, tuple], dict]:
    """The state dict's names and shapes, and the config diffusers would save, of the class built on the meta
    device (the published sizes cost nothing there)."""
    cls = getattr(diffusers, cls_name)
    with torch.device("meta"):
        model = cls(**config)
    saved = {**dict(model.config), "_class_name": cls_name}
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, json.loads(json.dumps(saved))


def _write_component(folder, shapes: dict[str, tuple], config: dict) -> None:
    """config.json and a header-only weights file made as long as its tensors say (sparse: nothing is written)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    header = safetensors_header(shapes, "BF16")
    data = sum(2 * _numel(s) for s in shapes.values())
    with open(folder / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("channels", [4, 9])
@pytest.mark.parametrize("family", sorted(UNETS))
def test_diffusers_own_unet_reads_as_the_single_file_unet(tmp_path, family, channels):
    shapes, config = _meta_shapes("UNet2DConditionModel", {**UNETS[family], "in_channels": channels})
    _write_component(tmp_path / "pipe" / "unet", shapes, config)
    with open_checkpoint(tmp_path / "pipe") as source:
        got = dict(source.tensors)
    expected = unet_shapes(SPECS[family], channels)
    assert {k: v.shape for k, v in got.items()} == expected
    p = probe(tmp_path / "pipe")
    assert (p.family, p.variant, p.in_channels, p.format) == (family, VARIANTS[channels], channels, "diffusers")
    assert all(k.startswith(UNET) for k in got)


def test_diffusers_own_vae_reads_as_the_single_file_vae(tmp_path):
    unet, unet_config = _meta_shapes("UNet2DConditionModel", SD1)
    vae, vae_config = _meta_shapes("AutoencoderKL", {"block_out_channels": [128, 256, 512, 512],
                                                     "down_block_types": ["DownEncoderBlock2D"] * 4,
                                                     "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2,
                                                     "latent_channels": 4})  # fmt: skip
    _write_component(tmp_path / "pipe" / "unet", unet, unet_config)
    _write_component(tmp_path / "pipe" / "vae", vae, vae_config)
    with open_checkpoint(tmp_path / "pipe") as source:
        got = {k: v.shape for k, v in source.tensors.items() if k.startswith("first_stage_model.")}
    assert got == vae_shapes()


def test_a_v_prediction_folder_says_so(tmp_path):
    shapes, config = _meta_shapes("UNet2DConditionModel", {**SD2, "in_channels": 4})
    _write_component(tmp_path / "pipe" / "unet", shapes, config)
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "v_prediction"}')
    p = probe(tmp_path / "pipe")
    assert (p.family, p.prediction, p.markers) == ("sd2", "v", ["v_pred"])


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_diffusers_own_transformer_folder_is_told_by_probe(tmp_path, name):
    cls, config, family, variant = TRANSFORMERS[name]
    shapes, saved = _meta_shapes(cls, config)
    _write_component(tmp_path / "pipe" / "transformer", shapes, saved)
    p = probe(tmp_path / "pipe")
    assert (p.family, p.variant, p.format, p.media) == (family, variant, "diffusers", "image"), name
    assert "transformer" in p.components


def test_a_video_transformer_folder_is_named_as_video(tmp_path):
    shapes, saved = _meta_shapes("WanTransformer3DModel", {"num_layers": 2})
    _write_component(tmp_path / "pipe" / "transformer", shapes, saved)
    p = probe(tmp_path / "pipe")
    assert (p.family, p.media, p.model) == (None, "video", "Wan")


def test_klein_sizes_are_told_from_the_original_key_format():
    """The single files Civitai serves keep BFL's key names: the text embedding's width says the size."""
    from merge.header import TensorInfo
    from merge.layout import detect

    key_norm = "double_blocks.0.img_attn.norm.key_norm.scale"
    for width, hidden, family in [(7680, 3072, "flux2-klein-4b"), (12288, 4096, "flux2-klein-9b"),
                                  (15360, 6144, "flux2")]:  # fmt: skip
        tensors = {k: TensorInfo("BF16", s) for k, s in {key_norm: (128,), "txt_in.weight": (hidden, width),
                                                          "double_stream_modulation_img.lin.weight": (8, 8)}.items()}
        assert detect(tensors).family == family
