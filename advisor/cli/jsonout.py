"""Typed results to JSON for ``--json``: dataclasses as objects (a ``__json__`` method has its say), datetimes as
ISO 8601, sets as sorted lists, paths as strings. JSON escapes control characters, so names from registries
reach a script as data, never as terminal codes."""

import dataclasses
import json
import re
import unicodedata
from datetime import datetime
from pathlib import Path

_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def plain(obj):
    """``obj`` as JSON-ready values."""
    if hasattr(obj, "__json__"):
        return plain(obj.__json__())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(plain(v) for v in obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _escape_invisible(match: re.Match) -> str:
    """Non-ASCII stays readable (CJK names, emoji); what JSON leaves raw but a terminal obeys (C1 controls,
    bidirectional overrides, zero-width and line separators) becomes a \\u escape."""
    ch = match.group()
    return f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch


def dumps(obj) -> str:
    return _NON_ASCII.sub(_escape_invisible, json.dumps(plain(obj), indent=2, ensure_ascii=False))


def error(code: str, message: str, **extra) -> str:
    """What a command prints on stdout with ``--json`` when it fails: ``{"error": {"code", "message", ...}}``."""
    return dumps({"error": {"code": code, "message": message, **extra}})
