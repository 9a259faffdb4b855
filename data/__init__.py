"""Bundled knowledge (families, base-model strings, official checkpoints) as JSON data files."""

import json
from functools import cache
from importlib.resources import files


@cache
def load(name: str) -> dict:
    """Parse ``data/<name>.json`` shipped with the package (works from a wheel and from a checkout)."""
    return json.loads(files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))
