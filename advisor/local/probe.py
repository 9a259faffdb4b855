"""Classify a local checkpoint from its safetensors header (or diffusers configs) alone: no tensor data read,
no torch import."""

import time
from dataclasses import dataclass, field
from pathlib import Path

from crawler import families
from merge import layout
from merge.checkpoint import read_config
from merge.header import CheckpointError

_DTYPE_NAMES = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}


@dataclass
class ProbeResult:
    path: str
    format: str  # safetensors | diffusers | pickle
    family: str | None
    variant: str
    prediction: str  # "v" when v_pred is present, else "epsilon" (or the family's own)
    markers: list[str]
    dtype: str
    params: int
    in_channels: int | None
    components: list[str]
    architecture: str | None
    seconds: float
    sha256: str | None = None
    autov1: str | None = None
    autov2: str | None = None
    autov3: str | None = None
    warnings: list[str] = field(default_factory=list)
    media: str = "image"  # video: a video model's transformer, named in ``model`` (no image checkpoint)
    model: str | None = None


def _diffusers(path: Path) -> layout.Layout:
    """A diffusers folder's layout from its configs: a UNet's (SD 1.x/2.x, SDXL) or a transformer's (FLUX, ...)."""
    if (path / "unet" / "config.json").exists():
        unet, transformer = read_config(path / "unet" / "config.json", required=True), None
    elif (path / "transformer" / "config.json").exists():
        unet, transformer = None, read_config(path / "transformer" / "config.json", required=True)
    else:
        raise CheckpointError(f"{path}: not a diffusers folder (no unet/config.json or transformer/config.json)")
    try:
        scheduler = read_config(path / "scheduler" / "scheduler_config.json")
    except CheckpointError:
        scheduler = {}  # an optional file that says nothing readable: the prediction is the family's
    lo = layout.from_diffusers_folder(unet, transformer, scheduler)
    lo.components = [c for c in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2") if (path / c).is_dir()]
    return lo


def from_layout(path: Path, lo: layout.Layout, fmt: str) -> ProbeResult:
    """What a probe says of a file whose tensors were classified (``lo``) by the caller."""
    fam = families.family(lo.family) or {}
    pred = "v" if "v_pred" in lo.prediction else fam.get("prediction") or "epsilon"
    if lo.media != "image" or (lo.family is None and "unet" not in lo.components):
        pred = "unknown"  # a video transformer's, or one no signature knows: nothing says how it predicts
    return ProbeResult(str(path), fmt, lo.family, lo.variant, pred, lo.prediction,
                       _DTYPE_NAMES.get(lo.dtype, lo.dtype.lower()), lo.params, lo.in_channels, lo.components,
                       lo.architecture, 0.0, media=lo.media, model=lo.name)  # fmt: skip


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def tensor_index(path: Path, *, torch_fallback: bool) -> tuple[dict, str]:
    """Every tensor's name, dtype and shape, and the format: a safetensors header, or a zip ``.ckpt``'s pickle
    parsed as merge reads it (no tensor data, nothing executed). A pickle only torch can read (a legacy
    archive) is loaded with ``weights_only=True`` where ``torch_fallback`` allows it, else refused."""
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        from merge import header  # looked up at each call: tests count the header reads a scan makes

        return header.read_header(path).tensors, "safetensors"
    from merge.zip_pickle import parse

    parsed = parse(path)
    if parsed is not None:
        return parsed.tensors, "pickle"
    from merge.checkpoint import open_checkpoint, pickle_kind

    pickle_kind(path)  # an error page saved as a .ckpt is said to be one, by scan as by probe
    if not torch_fallback:
        raise CheckpointError("a pickle that only torch could read: convert it to .safetensors to scan it")

    with open_checkpoint(path) as source:  # torch.load(weights_only=True): refuses anything but weights
        return dict(source.tensors), "pickle"


def probe(path: str | Path, *, with_hash: bool = False) -> ProbeResult:
    path = Path(path)
    t0 = time.perf_counter()
    if path.is_dir():
        result = from_layout(path, _diffusers(path), "diffusers")
    else:
        tensors, fmt = tensor_index(path, torch_fallback=True)
        result = from_layout(path, layout.detect(tensors), fmt)
    result.seconds = time.perf_counter() - t0
    if with_hash and path.is_file():
        from merge.hashing import file_hashes

        h = file_hashes(path, warn=result.warnings.append)
        result.sha256, result.autov1, result.autov2, result.autov3 = h.sha256, h.autov1, h.autov2, h.autov3
    return result
