"""Text both engines can store: a NUL byte is dropped and a lone surrogate (a string that has no UTF-8) becomes
U+FFFD, in every parameter of every statement the registry runs, so that one stranger's model name cannot
fail a PostgreSQL crawl (which refuses both) while SQLite stores it, and both engines hold the same text.

JSON kept in text columns (``tags``, evidence) gets the same treatment for what its escapes spell
(``\\u0000``, a lone ``\\ud800``), so that what is read back and decoded is storable too.
"""

from __future__ import annotations

import json
import re
from typing import Any

_RAW = re.compile("[\x00\ud800-\udfff]")
# a JSON escape of NUL or of a surrogate (lone or half of a pair: which, json.loads tells)
_ESCAPED = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
# either of the above, or the start of any \u escape: one search says a string needs a closer look
_SUSPECT = re.compile(r"[\x00\ud800-\udfff]|\\u[0dD]")


def _replace(match: re.Match) -> str:
    return "" if match.group() == "\x00" else "\ufffd"


def storable(value: str) -> str:
    """``value`` as both engines store it: NUL dropped, lone surrogates replaced (U+FFFD), in the text and in
    the strings of a JSON array or object the text holds."""
    if _SUSPECT.search(value) is None:
        return value
    if _RAW.search(value):
        value = _RAW.sub(_replace, value)
    if value.startswith(("[", "{")) and _ESCAPED.search(value):
        value = _storable_json(value)
    return value


def _storable_json(value: str) -> str:
    try:
        decoded = json.loads(value)
    except ValueError:
        return value  # not JSON after all: its backslashes are its own text
    cleaned = _clean(decoded)
    return value if cleaned == decoded else json.dumps(cleaned)


def _clean(obj: Any) -> Any:
    if isinstance(obj, str):
        return _RAW.sub(_replace, obj)
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, dict):
        return {_clean(k): _clean(v) for k, v in obj.items()}
    return obj


def _row(row: Any) -> Any:
    if isinstance(row, dict):
        if any(v.__class__ is str and _SUSPECT.search(v) for v in row.values()):
            return {k: storable(v) if v.__class__ is str else v for k, v in row.items()}
        return row
    if isinstance(row, (tuple, list)):
        if any(v.__class__ is str and _SUSPECT.search(v) for v in row):
            return type(row)(storable(v) if v.__class__ is str else v for v in row)
        return row
    return row


def storable_parameters(parameters: Any, executemany: bool) -> Any:
    """A statement's parameters (one row, or a list of rows for ``executemany``) with every string storable;
    the same object where none needed a change (the usual case costs one regex search per string)."""
    if parameters is None:
        return parameters
    if not executemany:
        return _row(parameters)
    rows = [_row(r) for r in parameters]
    return parameters if all(a is b for a, b in zip(rows, parameters, strict=True)) else rows


def before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
    """The SQLAlchemy engine event (``retval=True``) that applies ``storable`` to every statement's text."""
    return statement, storable_parameters(parameters, executemany)
