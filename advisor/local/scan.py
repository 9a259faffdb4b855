"""`scan`: the user's models folder, each checkpoint paired with its inpainting partner.

A UI's root or models folder is recognised (A1111/Forge/reForge, ComfyUI with its extra_model_paths.yaml,
InvokeAI, SwarmUI, Fooocus) and its checkpoint folders walked; any other folder is walked as it is. Diffusers
folders count as one checkpoint; symlinks are followed, each real folder once (no loops). Every file is
classified from its header first: LoRAs, VAEs, text encoders, ControlNets and upscalers are set aside with the
reason, unhashed; checkpoints are hashed (cached by path, size and mtime) and answered by the lookup ladder,
preferring a partner that is already on disk (its own release, the official inpainting model, a build).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from advisor.advice.lookup import Match, answer_for_file
from advisor.local import uis
from advisor.local.probe import ProbeResult, from_layout, probe, tensor_index
from merge.distance import BaseDistance
from merge.header import CheckpointError, regular_file

WEIGHT_SUFFIXES = {".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"}


@dataclass
class Partner:
    kind: str  # local | built | already-inpainting | lookup's kinds (own-release, ..., build, a route's kind, none)
    reason: str
    path: str | None = None  # when it is on disk
    target: object | None = None
    command: object | None = None
    buildable: bool = False  # a route ranks first, but an add-difference build is possible too (and made if asked)


@dataclass
class ScannedCheckpoint:
    path: str
    family: str | None
    variant: str
    sha256: str | None
    match: Match | None
    partner: Partner | None
    distance: BaseDistance | None = None  # its UNet against its family's official base, where that was at hand


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class ScanResult:
    root: str
    layout: str  # a UI of data/uis.json (comfyui, a1111, forge, ...) | folder
    folders: list[str]
    checkpoints: list[ScannedCheckpoint] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    asked_civitai: int = 0  # hashes the registry did not know, asked of Civitai
    found_on_civitai: int = 0  # models it answered with, now in the registry
    notes: list[str] = field(default_factory=list)


def checkpoint_folders(root: Path) -> tuple[str, list[Path]]:
    """The UI layout of ``root`` and the folders to walk for checkpoints (a UI without any: the folder itself)."""
    install = uis.find(root)
    folders = install.checkpoint_folders()
    return (install.ui, folders) if folders else ("folder", [root])


def walk(folders: list[Path]) -> list[Path]:
    """Weight files and diffusers folders under ``folders``, each real folder visited once (a FIFO or a device
    named like a weight file is listed too, for the scan to set aside unopened)."""
    seen: set[str] = set()
    out: list[Path] = []
    for top in folders:
        for folder, dirs, files in os.walk(top, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            here = Path(folder)
            pipeline = (here / "unet" / "config.json").is_file() or (here / "transformer" / "config.json").is_file()
            if "model_index.json" in files or (pipeline and folder != str(top)):
                out.append(here)
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out += [here / f for f in sorted(files) if not f.startswith(".") and Path(f).suffix.lower() in
                    WEIGHT_SUFFIXES]  # fmt: skip
    return out


def not_a_checkpoint(names: list[str], components: list[str], family: str | None) -> str | None:
    """Why a file with these tensor names is not a checkpoint (None when it is one)."""
    joined = " ".join(names[:400])  # an add-on first: a ControlNet of a transformer carries its keys too
    if "lora_" in joined or ".lora." in joined or "lora_A" in joined or "hada_" in joined:
        return "a LoRA (or LyCORIS): an add-on, not a checkpoint"
    if "control_model." in joined or "input_hint_block" in joined or "controlnet" in joined:
        return "a ControlNet: an add-on, not a checkpoint"
    if "unet" in components or family is not None:  # a UNet, or a transformer data/architectures.json knows
        return None
    if any(n.startswith(("encoder.", "decoder.", "first_stage_model.")) for n in names) and \
            not any("diffusion_model" in n for n in names):  # fmt: skip
        return "a VAE alone: not a checkpoint"
    if any(n.startswith(("text_model.", "cond_stage_model.", "conditioner.", "encoder.block.")) for n in names):
        return "a text encoder alone: not a checkpoint"
    if any(n.startswith(("model.0.", "body.", "conv_first.")) for n in names):
        return "an upscaler: not a checkpoint"
    return "no UNet in it: not a Stable Diffusion checkpoint"


def _classify(path: Path) -> tuple[ProbeResult, str | None]:
    """What the header says of ``path``, and why it is set aside (None: a checkpoint)."""
    from merge import layout

    if path.is_dir():
        p = probe(path)
        if p.media != "image":
            return p, f"a {p.media} model ({p.model}): not an image checkpoint"
        whole = "unet" in p.components or ("transformer" in p.components and p.family is not None)
        return p, None if whole else "a diffusers folder without a UNet or a transformer this tool knows"
    tensors, fmt = tensor_index(path, torch_fallback=False)  # a folder of files: no torch.load per pickle
    lo = layout.detect(tensors)
    if lo.media != "image":
        return from_layout(path, lo, fmt), f"{lo.label}: not an image checkpoint"
    return from_layout(path, lo, fmt), not_a_checkpoint(list(tensors), lo.components, lo.family)


@functools.cache
def _classifier() -> str:
    """What a cached verdict was made by: this release's architecture signatures (data/architectures.json) and
    the rules below; a verdict of another is made again (an upgrade knows more architectures)."""
    from data import load

    blob = json.dumps([load("architectures"), _RULES], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_RULES = 2  # raised when the set-aside rules below change


class _Classified:
    """Header verdicts kept in the cache by path, size and mtime (like the hashes): a re-scan of 500 files
    reads no header."""

    def __init__(self):
        from merge import hashing

        self.file = hashing.cache_dirs()[0] / "scan-probes.json"
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            data = {}
        self.entries = data if isinstance(data, dict) else {}
        self.changed = False

    def get(self, path: Path) -> tuple[ProbeResult | None, str | None]:
        """(the probe, why the file is set aside): a broken file is ``(None, "unreadable: ...")``."""
        from merge import hashing

        name, stamp = hashing.file_stamp(path) if path.is_file() else (None, None)
        entry = self.entries.get(name) if name else None
        if isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("by") == _classifier():
            try:
                return (ProbeResult(**entry["probe"]) if entry.get("probe") else None), entry.get("aside")
            except TypeError:
                pass
        try:
            found, aside = _classify(path)
        except (CheckpointError, ValueError) as exc:
            message = (str(exc).splitlines() or [type(exc).__name__])[0].removeprefix(f"{path}: ")
            found, aside = None, f"unreadable: {message[:200]}"
        if name:
            self.entries[name] = {"stamp": stamp, "probe": asdict(found) if found else None, "aside": aside,
                                  "by": _classifier()}  # fmt: skip
            self.changed = True
        return found, aside

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.file)
        except OSError:
            pass  # a cache that cannot be written costs the next scan a header read per file, nothing else


def scan(paths: Sequence[str | os.PathLike], *, db: str | None = None, offline: bool = False,
         progress=None) -> list[ScanResult]:  # fmt: skip
    """One result per PATH; ``progress(done, total)`` as files are identified."""
    return [_scan_one(Path(p).expanduser(), db, offline, progress) for p in paths]


def _scan_one(root: Path, db, offline: bool, progress) -> ScanResult:
    from merge import hashing

    layout_name, folders = checkpoint_folders(root)
    result = ScanResult(str(root.resolve()), layout_name, [str(f) for f in folders])
    files = walk(folders)
    found: list[tuple[Path, ProbeResult, str]] = []
    classified = _Classified()
    checkpoints: list[tuple[Path, ProbeResult]] = []
    for path in files:  # headers first: what is set aside is never hashed
        try:
            regular_file(path, folder=True)  # a FIFO, device or socket named like a model: set aside, never opened
        except CheckpointError as exc:
            result.skipped.append(Skipped(str(path), str(exc).removeprefix(f"{path}: ")))
            continue
        try:
            probed, aside = classified.get(path)
        except OSError as exc:  # unreadable now (permissions, a file gone)
            probed, aside = None, f"unreadable: {exc.strerror or exc}"
        if aside or probed is None:  # (no probe comes with a reason, but for a damaged cache entry)
            result.skipped.append(Skipped(str(path), aside or "unreadable: no header verdict"))
        else:
            checkpoints.append((path, probed))
    done = [len(result.skipped)]
    if progress:
        progress(done[0], len(files))

    def identity(path: Path) -> str:
        sha = hashing.file_hashes(path, autov3=False).sha256 if path.is_file() else hashing.folder_identity(path)
        done[0] += 1
        if progress:
            progress(done[0], len(files))
        return sha

    # Files not hashed yet are hashed several at once where the disk allows it (not a spinning disk, where
    # parallel reads seek): hashlib works without the GIL, so each core hashes a file.
    workers = 1 if any(_rotational(p) for p, _ in checkpoints[:1]) else max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan-hash") as pool:
        futures = [(path, probed, pool.submit(identity, path)) for path, probed in checkpoints]
        for path, probed, future in futures:
            try:
                found.append((path, probed, future.result()))
            except (CheckpointError, OSError, ValueError) as exc:
                result.skipped.append(Skipped(str(path), f"unreadable: {str(exc).splitlines()[0][:200]}"))
    classified.save()
    local = {sha.upper(): path for path, _, sha in found if sha}
    if not offline:
        _ask_civitai([sha for path, _, sha in found if path.is_file()], db, result)
    from crawler import registry

    reader = registry.open_reader_if_any(db)
    try:
        for path, probed, sha in found:
            result.checkpoints.append(_pair(path, probed, sha, local, reader))
    finally:
        if reader is not None:
            reader.close()
    return result


VIRTUAL_DISKS = ("vd", "xvd")  # virtio and Xen block devices (a VM's disk)


def _rotational(path: Path, sysfs: Path = Path("/sys")) -> bool:
    """Whether ``path`` is on a spinning disk (Linux sysfs), where parallel reads would seek; False when it
    cannot be told, and for a VM's virtio or Xen disk, which reports rotational by default while the host's
    storage serves parallel reads faster than one stream."""
    try:
        dev = os.stat(path).st_dev
        block = (sysfs / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}").resolve()
        for folder in (block, block.parent):  # a partition's flag is its disk's
            flag = folder / "queue" / "rotational"
            if flag.exists():
                return flag.read_text().strip() == "1" and not folder.name.startswith(VIRTUAL_DISKS)
    except (OSError, ValueError):
        pass
    return False


def _ask_civitai(hashes: list[str], db, result: ScanResult) -> None:
    """Hashes the registry does not know, asked of Civitai in batches; what it knows goes into the registry."""
    from crawler import registry, sources
    from crawler.http import CrawlError

    reader = registry.open_reader_if_any(db)
    try:
        unknown = [h for h in hashes if reader is None or not reader.by_hash(h, "sha256")]
    finally:
        if reader is not None:
            reader.close()
    if not unknown:
        return
    result.asked_civitai = len(unknown)
    try:
        found = sources.get("civitai").fetch_by_hashes(lambda: registry.open(db), unknown)
    except CrawlError as exc:
        result.notes.append(f"could not ask Civitai about {len(unknown)} unknown files ({exc}); scan again online, "
                            "or fill the registry with `inpaint-advisor crawl civitai`")  # fmt: skip
        return
    result.found_on_civitai = found


def _pair(path: Path, probed: ProbeResult, sha, local: dict[str, Path], reader) -> ScannedCheckpoint:
    family, variant = probed.family, probed.variant
    if variant in ("inpaint", "fill"):
        return ScannedCheckpoint(str(path), family, variant, sha, None,
                                 Partner("already-inpainting", "this is an inpainting model", str(path)))  # fmt: skip
    made = reader.built_from(sha) if reader is not None and sha else []
    if made:
        return ScannedCheckpoint(str(path), family, variant, sha, None, Partner(
            "built", f"Built here from this file on {str(made[0].created_at)[:10]}.", made[0].path))
    try:
        answer = answer_for_file(path, probed, reader, sha)
    except Exception as exc:  # noqa: BLE001 - one file's trouble is its own row, the scan goes on
        return ScannedCheckpoint(str(path), family, variant, sha, None, Partner("none", f"lookup failed: {exc}"))
    rec = answer.recommendation
    if rec is None:
        return ScannedCheckpoint(str(path), family, variant, sha, answer.match, None)
    target = rec.target
    there = local.get((target.sha256 or "").upper()) if target is not None else None
    if there is not None and there != path:
        partner = Partner("local", f"{rec.reason} It is already here.", str(there), target, None)
    elif rec.kind == "built" and target is not None:
        partner = Partner("built", rec.reason, target.file, target, None)
    else:
        partner = Partner(rec.kind, rec.reason, None, target, rec.command)
        if rec.route is not None and any(alt.kind == "build" for alt in answer.alternatives):
            partner.buildable = True
            partner.reason += " It ranks above a merge for this family; a build is still possible."
    if answer.distance is not None:
        partner.reason += f" Its UNet measured {answer.distance}."
    return ScannedCheckpoint(str(path), family, variant, sha, answer.match, partner, answer.distance)
