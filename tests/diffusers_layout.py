"""(diffusers name, single-file name) pairs built by walking the architectures, independently of
merge/diffusers_keys.py's string rewriting, and a writer for tiny diffusers folders made from single-file
state dicts (tests/sd_layouts.py)."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.sd_layouts import SPECS

U = "model.diffusion_model."
RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
       "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip


def unet_pairs(family: str) -> dict[str, str]:
    """diffusers prefix -> single-file prefix for every block of the UNet."""
    spec = SPECS[family]
    n = len(spec.mult)
    pairs = {"conv_in.": U + "input_blocks.0.0.", "time_embedding.linear_1.": U + "time_embed.0.",
             "time_embedding.linear_2.": U + "time_embed.2.", "conv_norm_out.": U + "out.0.",
             "conv_out.": U + "out.2.", "mid_block.attentions.0.": U + "middle_block.1."}  # fmt: skip
    if spec.adm:
        pairs.update({"add_embedding.linear_1.": U + "label_emb.0.0.", "add_embedding.linear_2.": U + "label_emb.0.2."})
    for j in range(2):
        for hf, sd in RES.items():
            pairs[f"mid_block.resnets.{j}.{hf}."] = f"{U}middle_block.{2 * j}.{sd}."
    block = 1
    for i in range(n):
        attn = i in spec.attn_levels and spec.depth[i]
        for j in range(2):
            for hf, sd in RES.items():
                pairs[f"down_blocks.{i}.resnets.{j}.{hf}."] = f"{U}input_blocks.{block}.0.{sd}."
            if attn:
                pairs[f"down_blocks.{i}.attentions.{j}."] = f"{U}input_blocks.{block}.1."
            block += 1
        if i < n - 1:
            pairs[f"down_blocks.{i}.downsamplers.0.conv."] = f"{U}input_blocks.{block}.0.op."
            block += 1
    out = 0
    for i, level in enumerate(reversed(range(n))):  # diffusers up_blocks.0 is the deepest level
        attn = level in spec.attn_levels and spec.depth[level]
        for j in range(3):
            for hf, sd in RES.items():
                pairs[f"up_blocks.{i}.resnets.{j}.{hf}."] = f"{U}output_blocks.{out}.0.{sd}."
            if attn:
                pairs[f"up_blocks.{i}.attentions.{j}."] = f"{U}output_blocks.{out}.1."
            if j == 2 and level > 0:
                pairs[f"up_blocks.{i}.upsamplers.0.conv."] = f"{U}output_blocks.{out}.{2 if attn else 1}.conv."
            out += 1
    return pairs


def vae_pairs() -> dict[str, str]:
    F = "first_stage_model."
    res = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
    pairs = {}
    for part in ("encoder", "decoder"):
        for k in ("conv_in", "conv_out"):
            pairs[f"{part}.{k}."] = f"{F}{part}.{k}."
        pairs[f"{part}.conv_norm_out."] = f"{F}{part}.norm_out."
        for j in range(2):
            for hf, sd in res.items():
                pairs[f"{part}.mid_block.resnets.{j}.{hf}."] = f"{F}{part}.mid.block_{j + 1}.{sd}."
        for hf, sd in {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}.items():
            pairs[f"{part}.mid_block.attentions.0.{hf}."] = f"{F}{part}.mid.attn_1.{sd}."
    for i in range(4):
        for j in range(2):
            for hf, sd in res.items():
                pairs[f"encoder.down_blocks.{i}.resnets.{j}.{hf}."] = f"{F}encoder.down.{i}.block.{j}.{sd}."
        if i < 3:
            pairs[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"{F}encoder.down.{i}.downsample.conv."
        for j in range(3):
            for hf, sd in res.items():
                pairs[f"decoder.up_blocks.{i}.resnets.{j}.{hf}."] = f"{F}decoder.up.{3 - i}.block.{j}.{sd}."
        if i < 3:
            pairs[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"{F}decoder.up.{3 - i}.upsample.conv."
    for k in ("quant_conv", "post_quant_conv"):
        pairs[f"{k}."] = f"{F}{k}."
    return pairs


def _rename(key: str, pairs: dict[str, str]) -> str | None:
    """single-file key -> diffusers key, by the longest single-file prefix."""
    best = max((sd for sd in pairs.values() if key.startswith(sd)), key=len, default=None)
    if best is None:
        return None
    hf = next(h for h, s in pairs.items() if s == best)
    return hf + key[len(best) :]


def write_diffusers(folder: Path, single: dict[str, torch.Tensor], family: str) -> None:
    """Lay ``single`` (single-file names) out as a diffusers folder, fp16 variant files."""
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}, "text_encoder": {}, "text_encoder_2": {}}
    up, vp = unet_pairs(family), vae_pairs()
    clip_l = "conditioner.embedders.0.transformer." if family == "sdxl" else "cond_stage_model.transformer."
    big = "conditioner.embedders.1.model."
    for key, t in single.items():
        if key.startswith(U):
            parts["unet"][_rename(key, up)] = t
        elif key.startswith("first_stage_model."):
            name = _rename(key, vp)
            if ".mid_block.attentions.0.to_" in name and name.endswith("weight"):
                t = t.reshape(t.shape[0], t.shape[1])  # diffusers stores them as linears
            parts["vae"][name] = t
        elif key.startswith(clip_l):
            parts["text_encoder"][key[len(clip_l) :]] = t
        elif key.startswith(big):
            rest = key[len(big) :]
            te = parts["text_encoder_2"]
            if rest.startswith("transformer.resblocks."):
                n, tail = rest[len("transformer.resblocks.") :].split(".", 1)
                p = f"text_model.encoder.layers.{n}."
                if tail.startswith("attn.in_proj_"):
                    kind = tail.rsplit("_", 1)[1]
                    for name, chunk in zip("qkv", t.chunk(3, dim=0), strict=True):
                        te[f"{p}self_attn.{name}_proj.{kind}"] = chunk.clone()
                    continue
                tail = (
                    tail.replace("attn.out_proj", "self_attn.out_proj")
                    .replace("ln_1", "layer_norm1")
                    .replace("ln_2", "layer_norm2")
                    .replace("mlp.c_fc", "mlp.fc1")
                    .replace("mlp.c_proj", "mlp.fc2")
                )
                te[p + tail] = t
            elif rest == "text_projection":
                te["text_projection.weight"] = t.t().contiguous()
            elif rest == "positional_embedding":
                te["text_model.embeddings.position_embedding.weight"] = t
            elif rest == "token_embedding.weight":
                te["text_model.embeddings.token_embedding.weight"] = t
            elif rest.startswith("ln_final."):
                te["text_model.final_layer_norm." + rest.split(".", 1)[1]] = t
            # logit_scale has no diffusers counterpart
    cls = "StableDiffusionXLInpaintPipeline" if family == "sdxl" else "StableDiffusionInpaintPipeline"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    for comp, tensors in parts.items():
        if not tensors:
            continue
        (folder / comp).mkdir()
        fname = "diffusion_pytorch_model.fp16.safetensors" if comp in ("unet", "vae") else "model.fp16.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / comp / fname))
        if comp == "unet":
            conv_in = tensors["conv_in.weight"]
            cross = next(v.shape[1] for k, v in tensors.items() if k.endswith("attn2.to_k.weight"))
            (folder / comp / "config.json").write_text(
                json.dumps({"in_channels": conv_in.shape[1], "cross_attention_dim": cross})
            )
