"""Diffusers folder names -> single-file (LDM/SGM) names, for SD 1.x/2.x and SDXL.

The mapping is mechanical (it mirrors diffusers' own conversion scripts): UNet blocks are renumbered into
``input_blocks``/``middle_block``/``output_blocks``, VAE up-blocks are reversed, OpenCLIP-bigG's q/k/v are
concatenated into ``in_proj_weight``, its ``text_projection`` is transposed, and VAE attention linears become
1x1 convs. A ``Recipe`` says how to build one single-file tensor from the folder's tensors.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    component: str  # "unet", "vae", "text_encoder", "text_encoder_2"
    sources: tuple[str, ...]  # diffusers key(s) in that component
    op: str = "copy"  # "copy" | "cat" (dim 0) | "transpose" | "conv1x1" (append two unit dims)


def _unet_layer_map(down_attn: list[bool], up_attn: list[bool]) -> list[tuple[str, str]]:
    """(sd prefix, diffusers prefix) pairs for the UNet's blocks."""
    pairs = []
    n = len(down_attn)
    for i in range(n):
        for j in range(2):
            pairs.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                pairs.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            pairs.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                pairs.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            pairs.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            pairs.append((f"output_blocks.{3 * i + 2}.{2 if up_attn[i] else 1}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        pairs.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return pairs


_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]  # fmt: skip


def unet_key(key: str, layer_map: list[tuple[str, str]]) -> str | None:
    for hf, sd in _UNET_FIXED.items():
        if key.startswith(hf):
            return "model.diffusion_model." + sd + key[len(hf) :]
    if "resnets" in key:
        for hf, sd in _RESNET:
            key = key.replace(f".{hf}.", f".{sd}.")
    for sd, hf in layer_map:
        if key.startswith(hf):
            return "model.diffusion_model." + sd + key[len(hf) :]
    return None


# old and new diffusers names of the VAE's mid-block attention layers
_VAE_ATTN = {"group_norm": "norm", "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
             "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}  # fmt: skip
_VAE_ATTN_PREFIX = "mid_block.attentions.0."


def _vae_map() -> list[tuple[str, str]]:
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", _VAE_ATTN_PREFIX)]
    for i in range(4):
        for j in range(2):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < 3:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(3):
            pairs.append((f"decoder.up.{3 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        pairs.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    return pairs


_VAE_MAP = _vae_map()


def vae_key(key: str) -> tuple[str, bool]:
    """(single-file name, is an attention linear that must become a 1x1 conv)."""
    attn = _VAE_ATTN_PREFIX in key
    if attn:
        head, rest = key.split(_VAE_ATTN_PREFIX)
        layer, param = rest.rsplit(".", 1)
        key = f"{head}{_VAE_ATTN_PREFIX}{_VAE_ATTN.get(layer, layer)}.{param}"
    if "resnets" in key:
        key = key.replace("conv_shortcut", "nin_shortcut")
    for sd, hf in _VAE_MAP:
        key = key.replace(hf, sd)
    return "first_stage_model." + key, attn and key.endswith("weight") and ".norm." not in key


def _bigg_key(key: str) -> str | None:
    if key == "text_projection.weight":
        return "text_projection"
    if key.startswith("text_model.final_layer_norm."):
        return "ln_final." + key.rsplit(".", 1)[1]
    if key == "text_model.embeddings.token_embedding.weight":
        return "token_embedding.weight"
    if key == "text_model.embeddings.position_embedding.weight":
        return "positional_embedding"
    if key.startswith("text_model.encoder.layers."):
        rest = key[len("text_model.encoder.layers.") :]
        for hf, sd in [(".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."),
                       (".mlp.fc2.", ".mlp.c_proj."), (".self_attn.out_proj.", ".attn.out_proj.")]:  # fmt: skip
            rest = rest.replace(hf, sd)
        return "transformer.resblocks." + rest
    return None


# (component, single-file prefix of its text encoder) per family
_SD1_ATTN = ([True, True, True, False], [False, True, True, True])
_SDXL_ATTN = ([False, True, True], [True, True, False])


def build_recipes(components: dict[str, list[str]], sdxl: bool) -> dict[str, Recipe]:
    """Single-file name -> Recipe, for every tensor the folder's components hold."""
    recipes: dict[str, Recipe] = {}
    layer_map = _unet_layer_map(*(_SDXL_ATTN if sdxl else _SD1_ATTN))
    for key in components.get("unet", []):
        name = unet_key(key, layer_map)
        if name:
            recipes[name] = Recipe("unet", (key,))
    for key in components.get("vae", []):
        name, conv = vae_key(key)
        recipes[name] = Recipe("vae", (key,), "conv1x1" if conv else "copy")
    clip_l = "conditioner.embedders.0.transformer." if sdxl else "cond_stage_model.transformer."
    for key in components.get("text_encoder", []):
        recipes[clip_l + key] = Recipe("text_encoder", (key,))
    keys2 = set(components.get("text_encoder_2", []))
    for key in keys2:
        if ".self_attn.q_proj." in key:
            layer, kind = key.split(".self_attn.q_proj.")
            srcs = tuple(f"{layer}.self_attn.{p}_proj.{kind}" for p in "qkv")
            if all(s in keys2 for s in srcs):
                n = layer.rsplit(".", 1)[1]
                recipes[f"conditioner.embedders.1.model.transformer.resblocks.{n}.attn.in_proj_{kind}"] = Recipe(
                    "text_encoder_2", srcs, "cat"
                )
            continue
        if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        name = _bigg_key(key)
        if name:
            op = "transpose" if name == "text_projection" else "copy"
            recipes["conditioner.embedders.1.model." + name] = Recipe("text_encoder_2", (key,), op)
    return recipes
