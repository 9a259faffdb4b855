"""Get: from a model's answer to its inpainting setup in the user's UI (`inpaint-advisor get`).

The plan (`plan`: the answer the UI can use, each file with its destination and pin) and the run (`run`: the
files fetched or linked from the build cache, a build built). Where each UI keeps each kind of file is
advisor.local.uis (data/uis.json).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advisor.get.plan import GetPlan, plan_get
    from advisor.get.result import GetError, GetResult, Placement
    from advisor.get.run import run_get

__all__ = ["GetError", "GetPlan", "GetResult", "Placement", "get", "plan_get", "run_get"]

_HOME = {"GetError": "result", "GetPlan": "plan", "GetResult": "result", "Placement": "result", "plan_get": "plan",
         "run_get": "run"}  # fmt: skip

if not TYPE_CHECKING:

    def __getattr__(name: str):
        """A public name, from its module at first use (importing the package costs nothing)."""
        if name not in _HOME:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def get(query: str, *, root=".", ui: str | None = None, route: str | None = None, dry_run: bool = False,
        db: str | None = None, offline: bool = False, progress=None) -> "GetResult":  # fmt: skip
    """The Python API behind `inpaint-advisor get`: ``plan_get``, then (unless ``dry_run``) ``run_get``."""
    from advisor.get.plan import plan_get
    from advisor.get.run import run_get

    plan = plan_get(query, root=root, ui=ui, route=route, db=db, offline=offline)
    return plan.result if dry_run else run_get(plan, progress=progress)
