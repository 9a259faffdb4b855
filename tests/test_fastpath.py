"""The fast `lookup` path (advisor/cli/fastpath.py, which answers without importing typer) and typer's `lookup`
command are one command: the same options, and the same answer for the same argv."""

import pytest
import typer.main

from advisor.cli import fastpath
from advisor.cli.main import app, run


def _typer_lookup():
    command = typer.main.get_command(app).commands["lookup"]  # type: ignore[attr-defined]
    return {opt: p for p in command.params for opt in p.opts if opt != "--help"}


def test_the_fast_path_knows_every_option_of_the_typer_command_and_no_other():
    typer_options = _typer_lookup()
    assert {o for o in typer_options if o.startswith("-")} == set(fastpath.FLAGS) | set(fastpath.VALUED)
    for option, name in {**fastpath.FLAGS, **fastpath.VALUED}.items():
        param = typer_options[option]
        assert param.name == name and param.is_flag == (option in fastpath.FLAGS), option


@pytest.mark.parametrize("argv", [
    ["lookup", "SDXL 1.0", "--offline", "--json"],
    ["lookup", "--json", "--offline", "sd-v1-5-inpainting.safetensors"],
    ["lookup", "--offline", "--db={db}", "SD 1.5", "--json"],
    ["lookup", "--db", "{db}", "--offline", "nothing like any model zzqx", "--json"],
    ["lookup", "--offline", "urn:air:sdxl:lora:civitai:1@2", "--json"],
])  # fmt: skip
def test_both_paths_give_the_same_answer(argv, tmp_path, capsys):
    argv = [a.format(db=tmp_path / "none.db") for a in argv]
    fast = fastpath.try_lookup(argv)
    assert fast is not None  # a plain lookup: the fast path answered it
    fast_out = capsys.readouterr().out
    slow = run(argv)
    assert (slow, capsys.readouterr().out) == (fast, fast_out)
