"""How far a local fine-tune is from its family's base, when the base file is on this machine: beside the
fine-tune (a UI's checkpoints folder often holds it) or in the build cache (a build fetched it as C). Nothing is
downloaded for it: without the base at hand the advice goes by names and tags."""

from __future__ import annotations

import os
from pathlib import Path

from advisor.local.cached_files import hub_file_path
from crawler import families
from merge.distance import BaseDistance, base_distance
from merge.header import CheckpointError

MEASURED_FAMILIES = ("sd1", "sd2", "sdxl")  # the UNet families whose official base a build uses as C


def _candidates(family_id: str, near: Path) -> list[Path]:
    official = families.official_target(family_id)
    base = (official or {}).get("base")
    if official is None or official["id"] not in MEASURED_FAMILIES or not base:
        return []
    names = [base["file"], *official.get("file_names", {}).get("base", [])]
    found = [near.parent / Path(n).name for n in names if n.endswith(".safetensors")]
    found += [hub_file_path(m["repo"], base["file"]) for m in base.get("mirrors", [])]
    return found


def measure(path: Path, family_id: str | None) -> BaseDistance | None:
    """The distance of ``path`` (a safetensors fine-tune) from its family's official base, if that base file is
    at hand and readable; None otherwise (and for the base itself)."""
    if family_id is None or path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    own = os.stat(path)
    for candidate in _candidates(family_id, path):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return None  # the file is the base
        try:
            return base_distance(path, candidate)
        except (CheckpointError, OSError):
            continue  # a damaged or unreadable base says nothing: the next one may
    return None
