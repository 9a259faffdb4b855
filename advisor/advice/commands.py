"""Commands the user is told to run, as argument lists, never as shell text: names and URLs in them come from
registries and are data. ``shell_text`` renders one for a terminal or for JSON, every argument POSIX-quoted;
an ``EnvRef`` is the one part left for the user's shell to expand (``$CIVITAI_API_TOKEN``)."""

import re
import shlex
from dataclasses import dataclass

from advisor.safety import invisible

_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


@dataclass(frozen=True)
class EnvRef:
    """An argument ``prefix + $NAME``: the prefix is ours (a constant), the variable the user's."""

    name: str
    prefix: str = ""

    def __post_init__(self):
        if not _ENV_NAME.fullmatch(self.name):
            raise ValueError(f"not an environment variable name: {self.name!r}")

    def shell(self) -> str:
        escaped = re.sub(r'([\\"$`])', r"\\\1", self.prefix)  # inside double quotes only these are special
        return f'"{escaped}${self.name}"'


@dataclass
class Command:
    argv: list[str | EnvRef]
    label: str = ""  # what it is for, e.g. "download A"

    @property
    def plain_argv(self) -> list[str]:
        """``argv`` to run without a shell: a command with an ``EnvRef`` needs the user's shell to expand it."""
        plain = [a for a in self.argv if isinstance(a, str)]
        if len(plain) != len(self.argv):
            raise TypeError(f"{shell_text(self)} needs a shell: it names {', '.join(self.env)}")
        return plain

    @property
    def env(self) -> list[str]:
        return [a.name for a in self.argv if isinstance(a, EnvRef)]

    def __json__(self) -> dict:
        return {"shell": shell_text(self), "argv": [a if isinstance(a, str) else f"{a.prefix}${a.name}"
                                                    for a in self.argv], "env": self.env, "label": self.label}


def shell_text(command: Command) -> str:
    return " ".join(a.shell() if isinstance(a, EnvRef) else _quoted(a) for a in command.argv)


_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def _quoted(arg: str) -> str:
    """POSIX-quoted; an argument with a character a terminal does not show as itself (a newline, an escape
    sequence or a bidi override in a stranger's file name) in ANSI-C quotes, ``$'...'`` (bash, zsh, ksh, POSIX
    sh since 2024), that character escaped: the command then prints as itself, and pasted, gives the shell the
    same argument back. Plain quotes would carry it raw, for the terminal to act on or the printer to drop."""
    if not any(invisible(ch) for ch in arg):
        return shlex.quote(arg)
    return "$'" + "".join(_C_ESCAPES.get(ch) or (_escape(ch) if invisible(ch) else ch) for ch in arg) + "'"


def _escape(ch: str) -> str:
    code = ord(ch)  # \x is a byte: any character past ASCII goes as its code point, which bash writes as UTF-8
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
