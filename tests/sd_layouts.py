"""Key -> shape tables of real SD 1.x, SD 2.x and SDXL single-file checkpoints (LDM/SGM names), built from the
architectures' hyper-parameters like ldm's openaimodel.py does. ``scale`` shrinks widths for tiny test files;
what identifies a family (conv_in channels, cross-attention context width, key prefixes) stays real.
Used by the tests and by benchmarks/bench_merge.py (scale=1: full-size shapes).
"""

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET = "model.diffusion_model."


@dataclass(frozen=True)
class UNetSpec:
    channels: int
    mult: tuple[int, ...]
    attn_levels: tuple[int, ...]
    depth: tuple[int, ...]  # transformer depth per level
    mid_depth: int
    context: int
    linear_proj: bool
    adm: int | None = None  # SDXL's label embedding input width


SPECS = {
    "sd1": UNetSpec(320, (1, 2, 4, 4), (0, 1, 2), (1, 1, 1, 1), 1, 768, False),
    "sd2": UNetSpec(320, (1, 2, 4, 4), (0, 1, 2), (1, 1, 1, 1), 1, 1024, True),
    "sdxl": UNetSpec(320, (1, 2, 4), (1, 2), (0, 2, 10), 10, 2048, True, 2816),
}


def _norm(p, c):
    return {p + "weight": (c,), p + "bias": (c,)}


def _lin(p, o, i, bias=True):
    return {p + "weight": (o, i), **({p + "bias": (o,)} if bias else {})}


def _conv(p, o, i, k=3):
    return {p + "weight": (o, i, k, k), p + "bias": (o,)}


def _resblock(p, cin, cout, emb):
    d = {**_norm(p + "in_layers.0.", cin), **_conv(p + "in_layers.2.", cout, cin),
         **_lin(p + "emb_layers.1.", cout, emb), **_norm(p + "out_layers.0.", cout),
         **_conv(p + "out_layers.3.", cout, cout)}  # fmt: skip
    if cin != cout:
        d.update(_conv(p + "skip_connection.", cout, cin, 1))
    return d


def _transformer(p, c, depth, ctx, linear):
    d = {**_norm(p + "norm.", c)}
    d.update(_lin(p + "proj_in.", c, c) if linear else _conv(p + "proj_in.", c, c, 1))
    for n in range(depth):
        b = f"{p}transformer_blocks.{n}."
        for a in ("attn1", "attn2"):
            kv = c if a == "attn1" else ctx
            d.update({f"{b}{a}.to_q.weight": (c, c), f"{b}{a}.to_k.weight": (c, kv), f"{b}{a}.to_v.weight": (c, kv)})
            d.update(_lin(f"{b}{a}.to_out.0.", c, c))
        d.update({**_lin(b + "ff.net.0.proj.", c * 8, c), **_lin(b + "ff.net.2.", c, c * 4)})
        for k in (1, 2, 3):
            d.update(_norm(f"{b}norm{k}.", c))
    d.update(_lin(p + "proj_out.", c, c) if linear else _conv(p + "proj_out.", c, c, 1))
    return d


def unet_shapes(spec: UNetSpec, in_channels: int, scale: int = 1) -> dict[str, tuple]:
    ch = spec.channels // scale
    emb = ch * 4
    d = {**_lin(UNET + "time_embed.0.", emb, ch), **_lin(UNET + "time_embed.2.", emb, emb)}
    if spec.adm:
        d.update({**_lin(UNET + "label_emb.0.0.", emb, spec.adm), **_lin(UNET + "label_emb.0.2.", emb, emb)})
    d.update(_conv(UNET + "input_blocks.0.0.", ch, in_channels))
    skips, cur, n = [ch], ch, 1
    for level, m in enumerate(spec.mult):
        for _ in range(2):
            out = ch * m
            d.update(_resblock(f"{UNET}input_blocks.{n}.0.", cur, out, emb))
            cur = out
            if level in spec.attn_levels and spec.depth[level]:
                d.update(
                    _transformer(f"{UNET}input_blocks.{n}.1.", cur, spec.depth[level], spec.context, spec.linear_proj)
                )
            skips.append(cur)
            n += 1
        if level < len(spec.mult) - 1:
            d.update(_conv(f"{UNET}input_blocks.{n}.0.op.", cur, cur))
            skips.append(cur)
            n += 1
    d.update(_resblock(UNET + "middle_block.0.", cur, cur, emb))
    d.update(_transformer(UNET + "middle_block.1.", cur, spec.mid_depth, spec.context, spec.linear_proj))
    d.update(_resblock(UNET + "middle_block.2.", cur, cur, emb))
    n = 0
    for level in reversed(range(len(spec.mult))):
        for i in range(3):
            out = ch * spec.mult[level]
            d.update(_resblock(f"{UNET}output_blocks.{n}.0.", cur + skips.pop(), out, emb))
            cur = out
            has_attn = level in spec.attn_levels and spec.depth[level]
            if has_attn:
                d.update(
                    _transformer(f"{UNET}output_blocks.{n}.1.", cur, spec.depth[level], spec.context, spec.linear_proj)
                )
            if level and i == 2:
                d.update(_conv(f"{UNET}output_blocks.{n}.{2 if has_attn else 1}.conv.", cur, cur))
            n += 1
    d.update({**_norm(UNET + "out.0.", ch), **_conv(UNET + "out.2.", 4, ch)})
    return d


def vae_shapes(scale: int = 1) -> dict[str, tuple]:
    p, base = "first_stage_model.", 128 // scale
    chans = [base * m for m in (1, 2, 4, 4)]

    def res(q, cin, cout):
        r = {**_norm(q + "norm1.", cin), **_conv(q + "conv1.", cout, cin), **_norm(q + "norm2.", cout),
             **_conv(q + "conv2.", cout, cout)}  # fmt: skip
        if cin != cout:
            r.update(_conv(q + "nin_shortcut.", cout, cin, 1))
        return r

    def mid(q, c):
        m = {**res(q + "mid.block_1.", c, c), **res(q + "mid.block_2.", c, c), **_norm(q + "mid.attn_1.norm.", c)}
        for k in ("q", "k", "v", "proj_out"):
            m.update(_conv(f"{q}mid.attn_1.{k}.", c, c, 1))
        return m

    d = {**_conv(p + "encoder.conv_in.", base, 3)}
    cur = base
    for i, c in enumerate(chans):
        for j in range(2):
            d.update(res(f"{p}encoder.down.{i}.block.{j}.", cur, c))
            cur = c
        if i < 3:
            d.update(_conv(f"{p}encoder.down.{i}.downsample.conv.", c, c))
    d.update(
        {**mid(p + "encoder.", cur), **_norm(p + "encoder.norm_out.", cur), **_conv(p + "encoder.conv_out.", 8, cur)}
    )
    d.update({**_conv(p + "decoder.conv_in.", cur, 4), **mid(p + "decoder.", cur)})
    for i in reversed(range(4)):
        for j in range(3):
            d.update(res(f"{p}decoder.up.{i}.block.{j}.", cur, chans[i]))
            cur = chans[i]
        if i > 0:
            d.update(_conv(f"{p}decoder.up.{i}.upsample.conv.", cur, cur))
    d.update({**_norm(p + "decoder.norm_out.", cur), **_conv(p + "decoder.conv_out.", 3, cur)})
    d.update({**_conv(p + "quant_conv.", 8, 8, 1), **_conv(p + "post_quant_conv.", 4, 4, 1)})
    return d


def clip_l_shapes(prefix: str, scale: int = 1) -> dict[str, tuple]:
    w, vocab, layers = 768 // scale, 49408 // scale, 12 if scale == 1 else 2
    p = prefix + "text_model."
    d = {p + "embeddings.token_embedding.weight": (vocab, w), p + "embeddings.position_embedding.weight": (77, w),
         p + "embeddings.position_ids": ("int64", (1, 77))}  # fmt: skip
    for n in range(layers):
        q = f"{p}encoder.layers.{n}."
        for k in ("q", "k", "v", "out"):
            d.update(_lin(f"{q}self_attn.{k}_proj.", w, w))
        d.update({**_norm(q + "layer_norm1.", w), **_norm(q + "layer_norm2.", w), **_lin(q + "mlp.fc1.", w * 4, w),
                  **_lin(q + "mlp.fc2.", w, w * 4)})  # fmt: skip
    d.update(_norm(p + "final_layer_norm.", w))
    return d


def openclip_shapes(prefix: str, width: int, layers: int, scale: int = 1) -> dict[str, tuple]:
    w, vocab, layers = width // scale, 49408 // scale, layers if scale == 1 else 2
    d = {prefix + "positional_embedding": (77, w), prefix + "token_embedding.weight": (vocab, w)}
    for n in range(layers):
        q = f"{prefix}transformer.resblocks.{n}."
        d.update({q + "attn.in_proj_weight": (3 * w, w), q + "attn.in_proj_bias": (3 * w,)})
        d.update({**_lin(q + "attn.out_proj.", w, w), **_norm(q + "ln_1.", w), **_norm(q + "ln_2.", w),
                  **_lin(q + "mlp.c_fc.", w * 4, w), **_lin(q + "mlp.c_proj.", w, w * 4)})  # fmt: skip
    d.update({**_norm(prefix + "ln_final.", w), prefix + "text_projection": (w, w), prefix + "logit_scale": ()})
    return d


def checkpoint_shapes(family: str, variant: str = "normal", scale: int = 1) -> dict[str, tuple]:
    in_ch = {"normal": 4, "inpaint": 9, "pix2pix": 8, "depth": 5}[variant]
    d = unet_shapes(SPECS[family], in_ch, scale)
    d.update(vae_shapes(scale))
    if family == "sd1":
        d.update(clip_l_shapes("cond_stage_model.transformer.", scale))
    elif family == "sd2":
        d.update(openclip_shapes("cond_stage_model.model.", 1024, 24, scale))
    else:
        d.update(clip_l_shapes("conditioner.embedders.0.transformer.", scale))
        d.update(openclip_shapes("conditioner.embedders.1.model.", 1280, 32, scale))
    return d


def make_state_dict(shapes: dict[str, tuple], seed: int, dtype=torch.float16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        if s and s[0] == "int64":
            sd[k] = torch.arange(s[1][1], dtype=torch.int64).reshape(s[1])
        else:
            sd[k] = (torch.randn(s, generator=g) * 0.05).to(dtype)
    return sd


def write_checkpoint(
    path,
    family: str,
    variant: str = "normal",
    seed: int = 0,
    scale: int = 16,
    dtype=torch.float16,
    extra: dict | None = None,
) -> MutableMapping[str, torch.Tensor]:
    """Write a checkpoint of ``family``'s real key names with random values from ``seed``; returns its tensors,
    read from the file only when asked for (most callers never ask). The same arguments give the same file, so
    each is made once per test session, shared by the xdist workers, and copied after that: making the random
    values was a sixth of the suite's CPU time."""
    if scale == 1:  # full size (the benchmarks): gigabytes, never kept
        sd = make_state_dict(checkpoint_shapes(family, variant, scale), seed, dtype)
        sd.update(extra or {})
        save_file(sd, str(path))
        return sd
    shapes = checkpoint_shapes(family, variant, scale)
    layout = hashlib.sha256(repr(sorted(shapes.items())).encode()).hexdigest()[:12]  # a changed table: new files
    made = _cache_dir() / f"{family}-{variant}-{seed}-{scale}-{str(dtype).removeprefix('torch.')}-{layout}.safetensors"
    if not made.exists():
        partial = made.with_name(f".{os.getpid()}-{made.name}")
        save_file(make_state_dict(shapes, seed, dtype), str(partial))
        os.replace(partial, made)  # another worker may have made it meanwhile: the same bytes
    if extra:
        save_file({**load_file(str(made)), **extra}, str(path))
    else:
        shutil.copyfile(made, path)
    return _Tensors(made, {k: v.clone() for k, v in (extra or {}).items()})  # as they were written


class _Tensors(MutableMapping):
    """A written checkpoint's tensors, loaded from the session's copy on first use: the caller's own copies,
    to change as it likes."""

    def __init__(self, made: Path, extra: dict):
        self._made, self._extra, self._loaded = made, extra, None

    def _all(self) -> dict[str, torch.Tensor]:
        if self._loaded is None:
            self._loaded = {**load_file(str(self._made)), **self._extra}
        return self._loaded

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._all()[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self._all()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._all()[key]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


LAYOUTS = "INPAINT_ADVISOR_TEST_LAYOUTS"  # a folder the session's workers share (tests/conftest.py sets it)


@cache
def _cache_dir() -> Path:
    if os.environ.get(LAYOUTS):
        return Path(os.environ[LAYOUTS])
    folder = Path(tempfile.mkdtemp(prefix="inpaint-advisor-layouts-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
