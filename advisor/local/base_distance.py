"""How far a local fine-tune is from its family's base, when the official base file is on this machine: beside
the fine-tune (a UI's checkpoints folder often holds it) or in the build cache (a build fetched it as C).
Nothing is downloaded for it: without the base at hand the advice goes by names and tags.

A file is taken for the base only under the official file's name and with its size (data/families.json), and
not where its SHA256 is known (a scan hashes it) and is not the official one: a stranger's archive may ship a
file of that name. A file of that name and size whose hash was never computed is taken at its word (hashing
4-7 GB to weigh two answers would cost more than the answer is worth). Each measurement is kept by both files'
path, size, mtime and inode, so a re-scan measures nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from advisor.local.cached_files import hub_file_path
from crawler import families
from merge.distance import BaseDistance, base_distance
from merge.hashing import cache_dirs, cached
from merge.header import CheckpointError

# the UNet families whose official base is a safetensors file (SD 2.x's is a .ckpt: not measured)
MEASURED_FAMILIES = ("sd1", "sdxl")
_CACHE_VERSION = 2  # of the kept measurements: a change to merge/distance.py's sampling makes new entries


def _base_spec(family_id: str) -> dict | None:
    official = families.official_target(family_id)
    base = (official or {}).get("base")
    if official is None or official["id"] not in MEASURED_FAMILIES or not base or not base.get("size"):
        return None
    return base


def _candidates(base: dict, near: Path) -> list[Path]:
    return [near.parent / base["file"], *(hub_file_path(m["repo"], base["file"]) for m in base.get("mirrors", []))]


def _identity(st: os.stat_result, path: Path) -> list:
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino]


def kept_dir() -> Path:
    """Where measurements are kept (`cache clear all` empties it)."""
    return cache_dirs()[0] / "distances"


def _kept_at(key: list) -> Path:
    name = hashlib.blake2b(json.dumps(key).encode(), digest_size=16).hexdigest()
    return kept_dir() / f"{name}.json"


def _kept(key: list) -> BaseDistance | None:
    try:
        got = json.loads(_kept_at(key).read_text())
        return BaseDistance(float(got["relative"]), str(got["base"]), int(got["tensors"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _keep(key: list, d: BaseDistance) -> None:
    at = _kept_at(key)
    try:
        at.parent.mkdir(parents=True, exist_ok=True)
        partial = at.with_name(f".{os.getpid()}-{at.name}")
        partial.write_text(json.dumps({"relative": d.relative, "base": d.base, "tensors": d.tensors}))
        os.replace(partial, at)
    except OSError:
        pass  # a cache that cannot be written only costs the next measurement


def _hashed_otherwise(path: Path, base: dict) -> bool:
    """The file's SHA256 is known here (a scan or a probe --hash computed it) and is not the official base's."""
    known = cached(path, autov3=False)
    return known is not None and bool(base.get("sha256")) and known.sha256.lower() != base["sha256"].lower()


def measure(path: Path, family_id: str | None) -> BaseDistance | None:
    """The distance of ``path`` (a safetensors fine-tune) from its family's official base, if that base file is
    at hand (its official name and size) and readable; None otherwise, and for the base itself."""
    base = _base_spec(family_id) if family_id else None
    if base is None or path.suffix.lower() != ".safetensors":
        return None
    try:
        own = os.stat(path)
    except OSError:
        return None
    for candidate in _candidates(base, path):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            return None  # the file is the base
        if st.st_size != base["size"] or _hashed_otherwise(candidate, base):
            continue  # named like the base, and not it
        key = [_CACHE_VERSION, *_identity(own, path), *_identity(st, candidate)]
        if (kept := _kept(key)) is not None:
            return kept
        try:
            measured = base_distance(path, candidate)
        except (CheckpointError, OSError):
            continue  # a damaged or unreadable file (this base, or the fine-tune) says nothing
        if measured is not None:
            _keep(key, measured)
        return measured
    return None
