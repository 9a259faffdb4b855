"""Local: the user's own checkpoints and models folders, read from their headers.

What a checkpoint is, from its header alone (`probe`), and a models folder, each checkpoint paired with its
inpainting partner (`scan`).

The names below are imported on first use, so importing the package costs nothing. ``probe()`` and ``scan()``
themselves are ``advisor.local.probe.probe`` and ``advisor.local.scan.scan`` (the modules have those names).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advisor.local.probe import ProbeResult
    from advisor.local.scan import ScannedCheckpoint, ScanResult

__all__ = ["ProbeResult", "ScanResult", "ScannedCheckpoint"]

_HOME = {"ProbeResult": "probe", "ScanResult": "scan", "ScannedCheckpoint": "scan"}

if not TYPE_CHECKING:

    def __getattr__(name: str):
        """A public name, from its module at each use (a test's monkeypatch there is seen here too)."""
        if name not in _HOME:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
