"""Build: from anything `lookup` accepts to a verified inpainting checkpoint on disk.

The plan and the run (`builder`, prepared pairs used through merge.prepared), every download (`download`), many
builds at once (`batch`), and what the cache holds (`cache`).

The names below are imported on first use, so importing the package costs nothing (a cold `lookup` never
loads the build machinery).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advisor.build.batch import BatchResult, run_batch
    from advisor.build.builder import BuildError, BuildPlan, BuildResult, build, plan_build, run_build
    from advisor.build.download import Downloaded, DownloadError, Source, fetch
    from advisor.local.cached_files import files_dir

__all__ = ["BatchResult", "BuildError", "BuildPlan", "BuildResult", "DownloadError", "Downloaded", "Source", "build",
           "fetch", "files_dir", "plan_build", "run_batch", "run_build"]  # fmt: skip

_HOME = {"BatchResult": "batch", "run_batch": "batch", "BuildError": "builder", "BuildResult": "builder",
         "build": "builder", "BuildPlan": "builder", "plan_build": "builder", "run_build": "builder",
         "files_dir": "cache", "Downloaded": "download", "DownloadError": "download",
         "Source": "download", "fetch": "download"}  # fmt: skip

if not TYPE_CHECKING:

    def __getattr__(name: str):
        """A public name, from its module at each use (a test's monkeypatch there is seen here too)."""
        if name not in _HOME:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
