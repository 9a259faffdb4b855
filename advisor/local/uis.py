"""The UIs a user's models live in (data/uis.json): which one a folder is, and where it keeps each kind of file.

An install is told by what marks its root (ComfyUI's ``comfy/``, Forge's ``modules_forge/``, ...); a UI's models
folder itself is recognised too (``Stable-diffusion/`` is A1111's, ``checkpoints/`` ComfyUI's). ComfyUI's
``extra_model_paths.yaml`` adds folders for each kind: they are searched for files already there, and a section
marked ``is_default`` is where new files go, as ComfyUI itself does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

_MAX_CONFIG = 1 << 20  # an extra_model_paths.yaml is a few hundred bytes: anything far larger is not read
# a UI's models folder, named by the folder of checkpoints it holds (the root was given one level down)
_MODELS_FOLDERS = {"Stable-diffusion": "a1111", "Stable-Diffusion": "swarmui", "checkpoints": "comfyui"}


@cache
def _data() -> dict:
    from data import load

    return load("uis")


def ids() -> list[str]:
    return [u["id"] for u in _data()["uis"]]


def spec(ui_id: str) -> dict:
    return next(u for u in _data()["uis"] if u["id"] == ui_id)


def kinds() -> dict[str, str]:
    """Each kind of file a UI keeps in a folder of its own, with what it is."""
    return dict(_data()["kinds"])


@dataclass
class Install:
    """A UI install (or a folder taken as one): where each kind of file goes, and every folder to look in."""

    ui: str  # an id of data/uis.json, or "folder": no UI recognised
    root: Path
    models: Path  # the folder the UI's kinds of file live under
    recognised: bool  # its marks were found (False: taken as that UI because the user said so)
    extra: dict[str, list[Path]] = field(default_factory=dict)  # kind -> ComfyUI's extra_model_paths folders
    default_extra: dict[str, Path] = field(default_factory=dict)  # kind -> an is_default section's folder

    @property
    def name(self) -> str:
        return spec(self.ui)["name"] if self.ui != "folder" else "a plain folder"

    def folder(self, kind: str) -> Path | None:
        """Where a new file of this kind goes (None: this UI has no place for it)."""
        if kind in self.default_extra:
            return self.default_extra[kind]
        relative = spec(self.ui)["folders"].get(kind) if self.ui != "folder" else None
        return self.models / relative if relative else None

    def folders(self, kind: str) -> list[Path]:
        """Every folder the UI reads this kind from: where a file may already be."""
        main = self.folder(kind)
        return list(dict.fromkeys([*([main] if main else []), *self.extra.get(kind, [])]))

    def checkpoint_folders(self) -> list[Path]:
        """The folders a scan walks: existing ones only."""
        if self.ui == "folder":
            return [self.root]
        listed = spec(self.ui).get("scan")
        if listed:
            return [self.root / f for f in listed if (self.root / f).is_dir()]
        return [f for kind in ("checkpoint", "diffusion_model") for f in self.folders(kind) if f.is_dir()]


def find(root: Path, ui: str | None = None) -> Install:
    """The install at ``root``: the first UI (data order: forks before what they forked) one of whose marks is
    there, or whose models folder ``root`` is; ``ui`` given, only that UI is tried, and an unmarked folder is
    taken as its root; else a plain folder."""
    candidates = [u for u in _data()["uis"] if ui is None or u["id"] == ui]
    for u in candidates:
        if any((root / m).exists() for m in u["marks"]):
            return _install(u["id"], root, root / u["models"], True)
    for sub, name in _MODELS_FOLDERS.items():
        if (root / sub).is_dir() and (ui is None or ui == name or _same_folders(ui, name)):
            # a models folder: its UI is its parent's (A1111's models folder is Forge's and reForge's too)
            parent = find(root.parent, ui) if root.parent != root and ui is None else None
            if parent is not None and parent.recognised and parent.models == root:
                return parent
            ambiguous = ui is None and any(_same_folders(u["id"], name) for u in candidates if u["id"] != name)
            return _install(ui or name, root, root, not ambiguous)
    if ui is not None:
        return _install(ui, root, root / spec(ui)["models"], False)
    return Install("folder", root, root, False)


def same_layout(a: str, b: str) -> bool:
    """Whether two UIs keep checkpoints in a folder of the same name (A1111, Forge and reForge)."""
    return _same_folders(a, b)


def _same_folders(a: str, b: str) -> bool:
    """A1111's models folder is Forge's and reForge's too."""
    return spec(a)["folders"].get("checkpoint") == spec(b)["folders"].get("checkpoint")


def _install(ui: str, root: Path, models: Path, recognised: bool) -> Install:
    install = Install(ui, root, models, recognised)
    if spec(ui).get("extra_paths_keys"):
        install.extra, install.default_extra = _comfy_extra_paths(root, spec(ui)["extra_paths_keys"])
    return install


def _comfy_extra_paths(root: Path, keys: dict[str, list[str]]) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Each kind's folders from ComfyUI's extra_model_paths.yaml (each section's base_path + its entries), and
    where a section marked ``is_default`` sends new files; a broken config adds nothing."""
    config = root / "extra_model_paths.yaml"
    try:
        if not config.is_file() or config.stat().st_size > _MAX_CONFIG:
            return {}, {}
        import yaml

        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - a broken config adds nothing; ComfyUI's own folders still count
        return {}, {}
    found: dict[str, list[Path]] = {}
    default: dict[str, Path] = {}
    for section in (data or {}).values() if isinstance(data, dict) else []:
        if not isinstance(section, dict):
            continue
        given = section.get("base_path")
        base = Path(os.path.expanduser(given)) if isinstance(given, str) and given else root
        base = base if base.is_absolute() else root / base
        for kind, names in keys.items():
            for key in names:
                value = section.get(key)
                if not isinstance(value, str):  # ComfyUI splits strings only; an alias bomb is no path list
                    continue
                for entry in value.splitlines():
                    if not entry.strip():
                        continue
                    p = Path(os.path.expanduser(entry.strip()))
                    folder = p if p.is_absolute() else base / p
                    if section.get("is_default") is True:
                        default.setdefault(kind, folder)
                    if folder.is_dir():
                        found.setdefault(kind, []).append(folder)
    return found, default
