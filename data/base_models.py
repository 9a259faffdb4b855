"""Civitai's own list of base models (data/civitai_base_models.json), read by name: what a ``baseModel``
string is (its media and ecosystem) before anything in inpaint-advisor knows it."""

import re
from functools import cache

from data import load


def key(name: str) -> str:
    """How base model strings compare: case-insensitive, whitespace trimmed and collapsed (as Civitai's items
    write them over the years)."""
    return re.sub(r"\s+", " ", name.strip().lower())


@cache
def _by_key() -> dict[str, dict]:
    return {key(b["name"]): b for b in load("civitai_base_models")["base_models"]}


def civitai_base_model(name: str | None) -> dict | None:
    """Civitai's record of ``name`` (name, media, ecosystem, parent, hidden), None for a string not listed."""
    return _by_key().get(key(name)) if name else None


@cache
def _api_only_index() -> dict[str, dict]:
    return {key(bm): entry for entry in load("families").get("api_only", []) for bm in entry["civitai_base_models"]}


def api_only(name: str | None) -> dict | None:
    """The data's record of a base model its maker serves only through an API (data/families.json "api_only":
    no weights to inpaint with)."""
    return _api_only_index().get(key(name)) if name else None


@cache
def _not_image_index() -> dict[str, dict]:
    return {key(bm): e for e in load("families").get("not_image_models", []) for bm in e["civitai_base_models"]}


def not_an_image_model(name: str | None) -> dict | None:
    """The data's record of a base model Civitai lists as an image one that is none (ODOR, a joke)."""
    return _not_image_index().get(key(name)) if name else None


def is_image(name: str | None) -> bool:
    """An image base model by Civitai's list, or one it does not list (which may be anything)."""
    listed = civitai_base_model(name)
    return (listed is None or listed["media"] in ("image", "other")) and not_an_image_model(name) is None
