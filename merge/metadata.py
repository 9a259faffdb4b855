"""The metadata a merged checkpoint carries: ModelSpec, A1111's merge recipe, and inpaint-advisor's own recipe.

The inputs' sha256 are hashed while the merge runs: the header is written with fixed-width placeholders, and
``with_hashes`` fills them in before the file is committed (same length, so the header does not move).
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from merge import layout
from merge.plan import MergePlan

IMPLEMENTATION: dict[str | None, str] = {"sd1": "https://github.com/CompVis/stable-diffusion",
                  "sd2": "https://github.com/Stability-AI/stablediffusion",
                  "sdxl": "https://github.com/Stability-AI/generative-models"}  # fmt: skip


def placeholder(i: int) -> str:
    return f"{i:064d}"


def build(plan: MergePlan, title: str, sources: dict | None = None) -> dict[str, str]:
    """``sources``: where the inputs came from (registry ids, AIR, Hub repo and revision), kept in the recipe."""
    la, lb = plan.layouts["a"], plan.layouts["b"]
    names = [plan.recorded[k][0] if k in plan.recorded else Path(s.path).name
             for k, s in zip("abc", (plan.a, plan.b, plan.c), strict=True)]
    family = la.family
    arch = la.architecture or f"{family}-{la.variant}"
    recipe = {
        "type": "inpaint-advisor", "primary_model_hash": placeholder(1), "secondary_model_hash": placeholder(2),
        "tertiary_model_hash": placeholder(3), "interp_method": "Add difference", "multiplier": plan.multiplier,
        "save_as_half": plan.dtype == "fp16", "custom_name": title, "config_source": 0, "bake_in_vae": None,
        "discard_weights": "", "is_inpainting": la.variant == "inpaint", "is_instruct_pix2pix": la.variant == "pix2pix",
    }  # fmt: skip
    models = {placeholder(i + 1): {"name": n, "legacy_hash": None, "sd_merge_recipe": None} for i, n in
              enumerate(names)}  # fmt: skip
    own = {
        "tool": "inpaint-advisor", "formula": "A + (B - C) * M", "M": plan.multiplier, "dtype": plan.dtype,
        "inputs": {role: {"file": n, "sha256": placeholder(i + 1), "family": plan.layouts[k].family,
                          "variant": plan.layouts[k].variant}
                   for i, (role, k, n) in enumerate(zip("ABC", "abc", names, strict=True))},
        "first_conv": "delta on B's input channels, A's extra channels kept",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **({"sources": sources} if sources else {}),
    }  # fmt: skip
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch,
        "modelspec.implementation": IMPLEMENTATION.get(family, ""),
        "modelspec.title": title,
        "modelspec.resolution": layout.RESOLUTION.get(family, ""),
        "modelspec.merged_from": ", ".join(names),
        "modelspec.prediction_type": "v" if "v_pred" in lb.prediction else "epsilon",
        "modelspec.date": datetime.now(UTC).date().isoformat(),
        "sd_merge_recipe": json.dumps(recipe),
        "sd_merge_models": json.dumps(models),
        "inpaint_advisor.recipe": json.dumps(own),
        "format": "pt",
        **plan.extra_metadata,
    }


def with_hashes(metadata: dict[str, str], hashes: dict[int, str]) -> dict[str, str]:
    """The metadata with input ``n``'s placeholder replaced by its sha256."""
    final = {}
    for key, value in metadata.items():
        for n, sha in hashes.items():
            value = value.replace(placeholder(n), sha)
        final[key] = value
    return final
