"""A ready ComfyUI workflow (API format) for what `get` placed: the model wired with its inpainting partner, from
Load Image (the image, and the mask painted on it) to Save Image. Node names and inputs are those of
data/comfy_nodes.json (read from ComfyUI's and comfyui-inpaint-nodes' source at the commits it records), and a
test checks every workflow against them.

Written for the answers whose wiring is settled: an inpainting checkpoint (a release, the official model, a
build) with VAE Encode (for Inpainting); the Fooocus patch on the user's own model; and the inpainting
ControlNets (ProMax with its repaint type, NoobAI-Inpainting, SD 1.5's), each fed the image marked as it was
trained (xinsir's ProMax script blacks the masked area out). Other routes get their steps, no workflow.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from advisor.get.result import CHECKPOINT_KINDS, GetResult
from advisor.local.uis import Install
from advisor.safety import safe_filename

IMAGE = "inpaint-me.png"  # Load Image's file: the user picks theirs and paints the mask on it
# a checkpoint the user has not named (a model known by its registry name): Load Checkpoint says to pick one
YOUR_MODEL = "pick-your-model.safetensors"
# (steps, cfg, sampler, scheduler): the usual settings of the family's models
_SAMPLING = {"sd1": (25, 7.0, "dpmpp_2m", "karras"), "sd2": (25, 7.0, "dpmpp_2m", "karras"),
             "sdxl": (30, 6.0, "dpmpp_2m", "karras")}  # fmt: skip


@cache
def nodes() -> dict:
    from data import load

    return load("comfy_nodes")


def workflow_for(result: GetResult, install: Install) -> dict | None:
    """The API-format workflow for ``result`` in ComfyUI, or None where none is written for its answer."""
    if install.ui != "comfyui":
        return None
    family = result.match.family if result.match else None
    lineage = _sdxl_or_sd(family)
    if lineage is None:
        return None
    placed = {p.kind: p for p in result.files}
    if result.answer.kind in CHECKPOINT_KINDS:
        ckpt = _checkpoint_name(result, install)
        return _graph(ckpt, lineage, patch=None) if ckpt else None
    if result.answer.route == "fooocus-inpaint" and "inpaint" in placed:
        names = {p.name for p in result.files}
        head = next(n for n in names if n.endswith(".pth"))
        patch = next(n for n in names if n.endswith(".patch"))
        return _graph(_user_model(result, install), lineage, patch=(head, patch))
    if result.answer.route in _CONTROLNETS and "controlnet" in placed:
        union, black = _CONTROLNETS[result.answer.route]
        return _controlnet_graph(_user_model(result, install), lineage, placed["controlnet"].name, union, black)
    return None


# the inpainting ControlNets wired here: (the union type to set, or None; masked pixels black rather than -1), as
# each was trained (xinsir's ProMax script blacks the mask out; the SD 1.5 inpaint ControlNet takes -1)
_CONTROLNETS = {"controlnet-union-promax": ("repaint", True), "noobai-inpainting": (None, True),
                "controlnet-inpaint-sd15": (None, False)}  # fmt: skip


def _controlnet_graph(ckpt: str, lineage: str, controlnet: str, union: str | None, black: bool) -> dict:
    """Your model, an inpainting ControlNet fed the image with its masked area marked (comfyui_controlnet_aux's
    Inpaint Preprocessor), and the latent kept outside the mask (Set Latent Noise Mask)."""
    g = _graph(ckpt, lineage, patch=None)
    g["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}}
    g["9"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": ["4", 1]}}
    g["10"] = {"class_type": "InpaintPreprocessor",
               "inputs": {"image": ["4", 0], "mask": ["4", 1], "black_pixel_for_xinsir_cn": black}}
    g["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
    net = ["11", 0]
    if union is not None:
        g["12"] = {"class_type": "SetUnionControlNetType", "inputs": {"control_net": net, "type": union}}
        net = ["12", 0]
    g["13"] = {"class_type": "ControlNetApplyAdvanced",
               "inputs": {"positive": ["2", 0], "negative": ["3", 0], "control_net": net, "image": ["10", 0],
                          "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, "vae": ["1", 2]}}
    g["6"]["inputs"].update(positive=["13", 0], negative=["13", 1], latent_image=["9", 0])
    return g  # fmt: skip


def _sdxl_or_sd(family: str | None) -> str | None:
    from crawler import families

    chain = [f["id"] for f in families.lineage(family)]
    return next((f for f in chain if f in _SAMPLING), None)


def _checkpoint_name(result: GetResult, install: Install) -> str | None:
    """The inpainting checkpoint as Load Checkpoint lists it: its path under a checkpoints folder."""
    if result.checkpoint is not None:
        return _listed(Path(result.checkpoint), install)
    placed = next((p for p in result.files if p.kind == "checkpoint"), None)
    return _listed(Path(placed.path or placed.destination), install) if placed else None


def _user_model(result: GetResult, install: Install) -> str:
    """The user's own model, where the query was its file in a checkpoints folder; else a name to replace."""
    if result.match is not None and result.match.source == "file":
        listed = _listed(Path(result.query).expanduser(), install)
        if listed:
            return listed
    return YOUR_MODEL


def _listed(path: Path, install: Install) -> str | None:
    for folder in install.folders("checkpoint"):
        try:
            return path.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            continue
    return None


def _graph(ckpt: str, lineage: str, patch: tuple[str, str] | None) -> dict:
    steps, cfg, sampler, scheduler = _SAMPLING[lineage]
    g: dict[str, dict] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "5": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["4", 0], "vae": ["1", 2], "mask": ["4", 1],
                                                              "grow_mask_by": 6}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 0, "steps": steps, "cfg": cfg,
                                                   "sampler_name": sampler, "scheduler": scheduler,
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "inpainted"}},
    }  # fmt: skip
    if patch is not None:  # the patch goes on the model; the latent it reads carries the mask
        head, patch_file = patch
        g["9"] = {"class_type": "INPAINT_LoadFooocusInpaint", "inputs": {"head": head, "patch": patch_file}}
        g["10"] = {"class_type": "INPAINT_ApplyFooocusInpaint",
                   "inputs": {"model": ["1", 0], "patch": ["9", 0], "latent": ["5", 0]}}  # fmt: skip
        g["6"]["inputs"]["model"] = ["10", 0]
    return g


def file_name(result: GetResult) -> str:
    """Where in the models folder the workflow goes: named after the model (its file, or its name and version,
    however it was asked for), with the model's id where it has one, so no two models share one."""
    m = result.match
    if m is None:
        stem = "model"
    elif m.source == "file":
        stem = Path(result.query).stem
    else:
        stem = " ".join(p for p in (m.name, m.version_name) if p)
        if m.model_id:
            stem += f" {m.model_id.split(':', 1)[-1].replace('/', '--')}"
    return safe_filename(f"inpaint-{stem}.api.json", "inpaint.api.json")
