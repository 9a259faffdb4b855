"""One error root: every error a command reports derives from data.errors.InpaintAdvisorError, carries its code,
and takes its exit status from data/error_codes.json; the CLI reports any of them in one place."""

import ast
import importlib
import json

import pytest

from data.errors import InpaintAdvisorError, exit_status
from tests.conftest import ROOT


def _classes_with_a_code() -> list[tuple[str, str]]:
    """(module, class) of every class in the packages that names a ``code``."""
    found = []
    for package in ("advisor", "crawler", "merge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and any(
                        isinstance(item, ast.Assign) and any(getattr(t, "id", None) == "code" for t in item.targets)
                        for item in node.body):  # fmt: skip
                    found.append((module, node.name))
    return found


def test_every_error_that_names_a_code_derives_from_the_one_root():
    classes = _classes_with_a_code()
    assert len(classes) >= 15  # registry, crawl, download, build, merge, checkpoint, query, schedule, queue, ...
    outside = [f"{m}.{c}" for m, c in classes if not issubclass(getattr(importlib.import_module(m), c),
                                                                 InpaintAdvisorError)]  # fmt: skip
    assert outside == []


def test_the_exit_status_is_the_tables():
    from advisor.build import BuildError
    from crawler.registry.errors import NoRegistry, NotARegistry

    table = {c["code"]: c["exit"] for c in json.loads((ROOT / "data" / "error_codes.json").read_text())["codes"]}
    assert NoRegistry("x").exit_code == table["no-registry"] == 1
    assert NotARegistry("x").exit_code == table["not-a-registry"] == 2
    assert BuildError("x", "bad-input").exit_code == table["bad-input"] == 2
    assert BuildError("x").code == "build-failed" and exit_status("no-such-code") == 1


@pytest.mark.parametrize("as_json", [True, False])
def test_the_cli_reports_any_of_them_with_its_code_and_status(capsys, as_json):
    from advisor.advice.query import QueryError
    from advisor.cli.output import fail_for
    from merge.plan import MergeError

    for error, code, status in ((QueryError("cannot read it"), "bad-query", 2),
                                (MergeError("cannot merge it"), "merge-refused", 1)):  # fmt: skip
        assert fail_for(error, as_json=as_json) == status
        said = capsys.readouterr()
        if as_json:
            assert json.loads(said.out)["error"]["code"] == code
        else:
            assert str(error) in said.err
    assert fail_for(RuntimeError("a bug"), as_json=as_json) is None  # not ours: its traceback is the report


def test_an_error_that_names_no_code_is_still_one_line_with_a_code(capsys):
    from advisor.cli.output import fail_for

    assert fail_for(InpaintAdvisorError("a kind that forgot its code"), as_json=True) == 1
    assert json.loads(capsys.readouterr().out)["error"] == {"code": "error", "message": "a kind that forgot its code"}
