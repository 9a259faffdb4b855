"""Team: work that runs without the user at the keyboard.

Builds queued in the shared PostgreSQL registry and run by workers on any host (`worker`), and crawls on a
timer (`schedules`).

The names below are imported on first use, so importing the package costs nothing. The verbs (``jobs``,
``show``, ``retry``, ``cancel``; ``install``, ``remove``, ``show``) are the modules' own:
``advisor.team.worker`` and ``advisor.team.schedules``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advisor.team.schedules import Installed, ScheduleError, Shown
    from advisor.team.worker import NotQueued, Queued, enqueue, work

__all__ = ["Installed", "NotQueued", "Queued", "ScheduleError", "Shown", "enqueue", "work"]

_HOME = {"Installed": "schedules", "ScheduleError": "schedules", "Shown": "schedules", "NotQueued": "worker",
         "Queued": "worker", "enqueue": "worker", "work": "worker"}  # fmt: skip

if not TYPE_CHECKING:

    def __getattr__(name: str):
        """A public name, from its module at each use (a test's monkeypatch there is seen here too)."""
        if name not in _HOME:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
