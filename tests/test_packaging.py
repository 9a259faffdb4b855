"""A non-editable install works: the wheel carries every package and the bundled data files."""

import json
import platform
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import ROOT, cli_env


def test_wheel_carries_data_and_answers_from_outside_the_checkout(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("inpaint_advisor-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert {"data/families.json", "data/hf_crawl.json", "data/routes.json"} <= set(names)
    assert {n.split("/")[0] for n in names} >= {"advisor", "crawler", "merge", "data"}
    if sys.platform.startswith("linux") and platform.machine() == "x86_64" and shutil.which("cc"):
        assert any(n.startswith("merge/_fused.") and n.endswith(".so") for n in names)  # the merge's C loop
    # run from an empty directory with only the installed copy on the path: no file of the checkout is used
    env = cli_env(PYTHONPATH=str(site), INPAINT_ADVISOR_DB=str(tmp_path / "r.db"))
    result = subprocess.run([sys.executable, "-m", "advisor", "lookup", "SDXL 1.0", "--offline", "--json"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["match"]["family"] == "sdxl" and answer["recommendation"]["kind"] == "patch"
    assert "site" in subprocess.run([sys.executable, "-c", "import data; print(data.__file__)"], capture_output=True,
                                    text=True, env=env, cwd=tmp_path).stdout  # fmt: skip
