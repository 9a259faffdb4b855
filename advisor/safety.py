"""Text from strangers made safe for where it goes: a terminal, or a file name.

Names, base models, file names and headers come from Civitai and Hugging Face uploaders and from checkpoint
files. Shown on a terminal they must not move the cursor, clear the screen, set a hyperlink or hide text
(ANSI CSI/OSC sequences, C0/C1 controls, bidirectional overrides); used as a file name they must not leave
the folder they are meant for, start an option, or be empty.
"""

import re
import unicodedata

from data.terminal import ESCAPE_SEQUENCE

_SEQUENCE = ESCAPE_SEQUENCE  # removed whole, so nothing of them reaches the terminal
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp"}  # controls, format characters (bidi overrides, zero-width), separators
MAX_FILENAME_BYTES = 180  # well under the 255 of common filesystems, leaving room for ".partial-..." suffixes


def _visible(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def invisible(ch: str) -> bool:
    """A character a terminal does not show as itself: a control, a format character (a bidi override, a
    zero-width space) or a line or paragraph separator; ZWJ, which joins emoji, aside."""
    return unicodedata.category(ch) in _INVISIBLE and ch != "\u200d"


def terminal_text(value: object, *, keep_newlines: bool = False) -> str:
    """``value`` as text that prints as itself: escape sequences removed, other control and format characters
    shown as ``\\xNN`` / ``\\uNNNN``. Tabs become spaces; newlines too unless ``keep_newlines``."""
    text = _SEQUENCE.sub("", str(value))
    out = []
    for ch in text:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif ch in "\t\n\r":
            out.append(" ")
        elif invisible(ch):
            out.append(_visible(ch))
        else:
            out.append(ch)
    return "".join(out)


def safe_filename(name: str | None, fallback: str = "model.safetensors") -> str:
    """A basename that stays in the folder it is written to: the last path component only, no control or format
    characters, no leading ``-`` or ``.``, no ``..``, at most MAX_FILENAME_BYTES (the extension kept).
    Shell metacharacters may remain: commands quote every argument (``advisor.shell``)."""
    text = str(name or "")
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(ch for ch in _SEQUENCE.sub("", text) if unicodedata.category(ch) not in _INVISIBLE)
    text = text.strip().lstrip("-.").strip().replace("..", "_")
    if not text:
        return fallback
    stem, dot, ext = text.rpartition(".")
    if not dot or len(ext) > 16:
        stem, ext = text, ""
    ext_part = f".{ext}" if ext else ""
    budget = MAX_FILENAME_BYTES - len(ext_part.encode())
    encoded = stem.encode()
    if len(encoded) > budget:
        stem = encoded[:budget].decode("utf-8", "ignore").rstrip()
    return (stem + ext_part) if stem else fallback


def shorten(text: str, most: int = 100) -> str:
    """A stranger's name at most ``most`` characters where it is read as prose or on screen, cut in its middle
    (its start and its version both stay); --json keeps the whole name where it is a field."""
    if len(text) <= most:
        return text
    keep = most - 1
    return text[: keep - keep // 3] + "…" + text[len(text) - keep // 3 :]
