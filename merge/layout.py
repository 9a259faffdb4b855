"""Family and variant of a checkpoint from tensor names and shapes alone (domain.md section 2): the UNet
families by their cross-attention width and input channels here, the transformer (DiT) architectures by the
signatures of data/architectures.json."""

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache

from merge.header import TensorInfo

UNET = "model.diffusion_model."
CONV_IN = UNET + "input_blocks.0.0.weight"
VARIANTS = {4: "normal", 9: "inpaint", 8: "pix2pix", 5: "depth"}
CROSS_ATTN = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}
FLUX_VARIANTS = {64: "normal", 384: "fill"}  # FLUX.1's img_in width: 64 packed latent channels, 384 with the mask
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner", "flux1": "FLUX.1",
                "sd3": "SD 3", None: "an unknown architecture"}  # fmt: skip
ARCHITECTURES: dict[tuple[str | None, str], str] = {  # ModelSpec names (of a family, which may be unknown)
    ("sd1", "normal"): "stable-diffusion-v1", ("sd1", "inpaint"): "stable-diffusion-v1-inpainting",
    ("sd2", "normal"): "stable-diffusion-v2-512", ("sd2", "inpaint"): "stable-diffusion-v2-inpainting",
    ("sdxl", "normal"): "stable-diffusion-xl-v1-base", ("sdxl", "inpaint"): "stable-diffusion-xl-v1-inpainting",
    ("sd1", "pix2pix"): "stable-diffusion-v1-instruct-pix2pix", ("sd2", "depth"): "stable-diffusion-v2-depth",
}  # fmt: skip
MERGEABLE = frozenset({"sd1", "sd2", "sdxl"})  # the families whose add-difference recipe merge.plan knows
RESOLUTION: dict[str | None, str] = {"sd1": "512x512", "sd2": "512x512", "sdxl": "1024x1024",
                                     "sdxl-refiner": "1024x1024"}  # fmt: skip


@cache
def _signatures() -> dict:
    from data import load

    return load("architectures")


@cache
def _family_names() -> dict[str, str]:
    from data import load

    return {f["id"]: f["name"] for f in load("families")["families"]}


_ATTN2_K = re.compile(r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks).*attn2\.to_k\.weight$")


def _diffusers_signature(cfg: dict) -> dict | None:
    """The signature of data/architectures.json whose diffusers class (and config values) a transformer's
    ``config.json`` names."""
    kind = str(cfg.get("_class_name", ""))
    return next((s for s in _signatures()["signatures"] if kind in s.get("diffusers_classes", [])
                 and all(cfg.get(k) == v for k, v in s.get("diffusers_config", {}).items())), None)  # fmt: skip


def from_diffusers_config(cfg: dict, *, transformer: bool = False) -> tuple[str | None, str | None, int | None]:
    """(family, variant, input channels) from a diffusers ``unet/config.json`` (cross-attention width and
    input channels, as the single-file shapes say them) or ``transformer/config.json`` (its class, FLUX.1's
    input width, FLUX.2's text width); the variant is None for a transformer this table does not know."""
    channels = cfg.get("in_channels") if isinstance(cfg.get("in_channels"), int) else None
    if transformer:
        sig = _diffusers_signature(cfg)
        family = sig.get("family") if sig else None
        if family == "flux1":
            return family, FLUX_VARIANTS.get(channels or 0), channels
        return family, "normal" if family else None, channels
    width = cfg.get("cross_attention_dim")
    family = CROSS_ATTN.get(width) if isinstance(width, int) else None
    return family, VARIANTS.get(channels, "unknown") if channels is not None else "unknown", channels


def from_diffusers_folder(unet: dict | None, transformer: dict | None, scheduler: dict) -> "Layout":
    """A diffusers folder's layout from its configs alone: the UNet's or transformer's (which must be there),
    and the scheduler's prediction type (a v-prediction model says so there, not in its tensors)."""
    cfg = unet if unet is not None else transformer or {}
    family, variant, channels = from_diffusers_config(cfg, transformer=unet is None)
    lo = Layout(family, variant or "unknown", in_channels=channels)
    if unet is None:
        sig = _diffusers_signature(cfg)
        if sig is not None and "media" in sig:
            lo.media, lo.name = sig["media"], sig["name"]
    elif scheduler.get("prediction_type") == "v_prediction":  # a UNet's; flow models say their own way
        lo.prediction.append("v_pred")
    return lo


@dataclass
class Layout:
    family: str | None
    variant: str  # normal | inpaint | pix2pix | depth | fill | unknown
    prediction: list[str] = field(default_factory=list)  # markers present: "v_pred", "ztsnr"
    dtype: str = ""  # the most common floating dtype
    params: int = 0
    in_channels: int | None = None
    components: list[str] = field(default_factory=list)  # unet, vae, text_encoder(s)
    media: str = "image"  # video: a video model's transformer (named in ``name``), not an image checkpoint
    name: str | None = None  # the architecture, where it is no image family of data/families.json

    @property
    def label(self) -> str:
        if self.media != "image":
            return f"a {self.media} model ({self.name})"
        name = FAMILY_NAMES.get(self.family) or _family_names().get(self.family or "") or \
            self.family or "an unknown architecture"  # fmt: skip
        suffix = {"inpaint": " inpainting", "normal": ""}.get(self.variant, f" {self.variant}")
        return name + suffix

    @property
    def architecture(self) -> str | None:
        return ARCHITECTURES.get((self.family, self.variant))


def _find(tensors: dict[str, TensorInfo], suffix: str) -> TensorInfo | None:
    for prefix in ("", UNET, "model.", "transformer."):
        if prefix + suffix in tensors:
            return tensors[prefix + suffix]
    return None


def _transformer(tensors: dict[str, TensorInfo]) -> dict | None:
    """The first signature of data/architectures.json the tensors carry (under any of its prefixes)."""
    table = _signatures()
    prefixes = table["prefixes"]

    def find(key: str) -> TensorInfo | None:
        return next((tensors[p + key] for p in prefixes if p + key in tensors), None)

    for sig in table["signatures"]:
        if not all(any(find(k) is not None for k in group) for group in sig["keys"]):
            continue
        if any(find(k) is not None for k in sig.get("absent", [])):
            continue
        shapes_fit = True
        for rule in sig.get("shapes", []):
            t = find(rule["key"])
            if t is None or len(t.shape) <= rule["dim"] or t.shape[rule["dim"]] != rule["size"]:
                shapes_fit = False
        if shapes_fit:
            return sig
    return None


def detect(tensors: dict[str, TensorInfo]) -> Layout:
    floats: Counter[str] = Counter()
    params = 0
    for t in tensors.values():
        params += t.numel
        if t.is_float:
            floats[t.dtype] += t.numel
    markers: list[str] = [m for m in ("v_pred", "ztsnr") if m in tensors]
    layout = Layout(None, "unknown", markers, floats.most_common(1)[0][0] if floats else "", params)
    layout.components = [name for name, prefix in [
        ("unet", UNET), ("vae", "first_stage_model."), ("text_encoder", "cond_stage_model."),
        ("text_encoder", "conditioner.embedders.0."), ("text_encoder_2", "conditioner.embedders.1."),
    ] if any(k.startswith(prefix) for k in tensors)]  # fmt: skip
    layout.components = list(dict.fromkeys(layout.components))

    unet = tensors.get(CONV_IN) is not None and any(_ATTN2_K.match(k) for k in tensors)
    sig = None if unet else _transformer(tensors)  # a whole UNet says what it is: a stray key does not overrule it
    if sig is not None:
        if "media" in sig:
            layout.media, layout.name = sig["media"], sig["name"]
            return layout
        layout.family, layout.variant = sig["family"], "normal"
        if layout.family == "flux1":  # Fill's img_in takes the mask and the masked image too
            img_in = _find(tensors, "img_in.weight")
            layout.in_channels = img_in.shape[1] if img_in and len(img_in.shape) == 2 else None
            layout.variant = FLUX_VARIANTS.get(layout.in_channels or 0, "unknown")
        return layout
    conv_in = tensors.get(CONV_IN)
    if conv_in is not None and len(conv_in.shape) == 4:
        layout.in_channels = conv_in.shape[1]
        layout.variant = VARIANTS.get(layout.in_channels, "unknown")
    width = next((t.shape[-1] for k, t in tensors.items() if _ATTN2_K.match(k) and len(t.shape) == 2), None)
    layout.family = CROSS_ATTN.get(width) if width is not None else None
    if layout.family is None:  # no UNet cross-attention (a partial file): the text encoders still tell
        if any(k.startswith("conditioner.embedders.1.model.") for k in tensors):
            layout.family = "sdxl"
        elif any(k.startswith("cond_stage_model.model.") for k in tensors):
            layout.family = "sd2"
        elif any(k.startswith("cond_stage_model.transformer.") for k in tensors):
            layout.family = "sd1"
    return layout
