"""Where the cache keeps the files builds fetch (A, C, fine-tunes): one layout, read by builds, `get` and the
advice that looks for a base file already on this machine."""

from pathlib import Path

from advisor.safety import safe_filename
from merge import hashing


def files_dir() -> Path:
    return hashing.cache_dirs()[0] / "files"


def hub_file_path(repo: str, path: str) -> Path:
    """Where the cache keeps a Hub repo's file (the repo's and the path's parts made safe: strangers name them)."""
    parts = [safe_filename(p, "_") for p in path.split("/")]
    return files_dir() / "hf" / safe_filename(repo.replace("/", "--"), "repo") / "/".join(parts)
