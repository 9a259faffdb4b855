"""Names from strangers, end to end: crafted Civitai items are crawled, then `status`, `lookup` and the crawl
summary must print them as literal text, and every command `lookup` prints must run as data when pasted."""

import json
import random
import re
import stat
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from advisor.safety import MAX_FILENAME_BYTES, safe_filename, terminal_text
from tests.civitai_fake import FakeCivitai, Server, synthetic_item
from tests.conftest import cli_env, run_cli

ESC_OR_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
OSC8 = "\x1b]8;;http://evil.example\x07click here\x1b]8;;\x07"


def _item(model_id: int, name: str, *, base="SD 1.5", file_name=None, inpaint_file=None, creator="someone"):
    item = synthetic_item(model_id, random.Random(model_id), datetime(2025, 1, 1))
    item["name"] = name
    item["creator"] = {"username": creator}
    for version in item["modelVersions"]:
        version["baseModel"] = base
        version["name"] = "v1.0"
        version["baseModelType"] = "Standard"
        for f in version["files"]:
            f["name"] = file_name or f["name"]
    if inpaint_file:  # the newest version becomes its inpainting release
        newest = item["modelVersions"][0]
        newest["name"], newest["baseModelType"] = "v1.0-inpainting", "Inpainting"
        newest["files"][0]["name"] = inpaint_file
    return item


@pytest.fixture
def hostile(filled_registry, tmp_path_factory):
    """A registry crawled (once per worker, then copied) from crafted items; the markers are files that pasted
    commands must never create."""

    def crawl(db: str):
        markers = [tmp_path_factory.mktemp("markers") / f"owned-{i}" for i in (1, 2, 3)]
        items = [
            _item(910001, f"Evil [/] [bold red]Mix\x1b[2J\x1b[H {OSC8} \u202eredda", creator="bad\x1b[31mguy[/]",
                  file_name=f"x$(touch {markers[0]}).safetensors"),
            _item(910002, "Quote Breaker", base="SDXL 1.0", file_name=f'a";touch {markers[1]};".safetensors'),
            _item(910003, "Path Walker", inpaint_file="../../etc/x.safetensors",
                  file_name="../../../../tmp/y.safetensors"),
            _item(910004, "Option Smuggler", inpaint_file="-rf --output=/etc/passwd.safetensors",
                  file_name=f"`touch {markers[2]}`.safetensors"),
            _item(910005, "L" * 400 + " long name " + "麦" * 120, file_name="n" * 600 + ".safetensors"),
            _item(910006, "Unknown Base", base="[red]SDXL[/red] \x1b[5m blink"),
        ]  # fmt: skip
        with Server(FakeCivitai(items)) as url:
            crawled = run_cli("crawl", "civitai", env=cli_env(INPAINT_ADVISOR_DB=db, INPAINT_ADVISOR_CIVITAI_URL=url))
        return crawled, markers

    db, (crawled, markers) = filled_registry("hostile names", crawl)
    return cli_env(INPAINT_ADVISOR_DB=db), crawled, markers


def _clean(text: str) -> bool:
    return ESC_OR_CONTROL.search(text) is None


def test_the_crawl_summary_and_status_print_crafted_names_as_text(hostile):
    env, crawl, _ = hostile
    assert crawl.returncode == 0, crawl.stderr
    assert _clean(crawl.stdout + crawl.stderr) and "Traceback" not in crawl.stderr
    assert "[red]SDXL[/red]" in crawl.stdout  # the unknown base model, shown as the text it is
    status = run_cli("status", env=env)
    assert status.returncode == 0, status.stderr
    assert _clean(status.stdout + status.stderr) and "[red]SDXL[/red]" in status.stdout


@pytest.mark.parametrize("model", ["civitai:910001", "civitai:910002", "civitai:910003", "civitai:910004",
                                   "civitai:910005", "civitai:910006", "Evil Mix", "Quote Breaker"])  # fmt: skip
def test_lookup_prints_crafted_names_as_literal_text(hostile, model):
    env, _, _ = hostile
    result = run_cli("lookup", model, "--offline", env=env)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr and _clean(result.stdout + result.stderr)
    if model == "civitai:910001":
        assert "Evil [/] [bold red]Mix" in result.stdout and "\\u202e" in result.stdout  # shown, not obeyed
        assert "evil.example" not in result.stdout  # the hyperlink's target went with its escape sequence


def _stubs(folder: Path, log: Path) -> Path:
    """curl, hf and inpaint-advisor that only write down their arguments, one per line."""
    bin_dir = folder / "stub-bin"
    bin_dir.mkdir()
    for name in ("curl", "hf", "inpaint-advisor"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name}" "$@" >> "{log}"\nprintf "\\n" >> "{log}"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _commands(answer: dict) -> list[dict]:
    recs = [answer["recommendation"], *answer["alternatives"]]
    return [c for r in recs if r for c in [*r.get("downloads", []), r.get("command")] if c]


@pytest.mark.parametrize("model", ["civitai:910001", "civitai:910002", "civitai:910003", "civitai:910004",
                                   "civitai:910005"])  # fmt: skip
def test_every_printed_command_runs_as_data(hostile, tmp_path, model):
    env, _, markers = hostile
    answer = json.loads(run_cli("lookup", model, "--offline", "--json", env=env).stdout)
    commands = _commands(answer)
    assert commands, answer
    scratch = tmp_path / f"paste-{model.split(':')[1]}"
    scratch.mkdir()
    log = tmp_path / "argv.log"
    bin_dir = _stubs(tmp_path, log)
    before = set(tmp_path.iterdir())
    for command in commands:
        run = subprocess.run(["bash", "-c", command["shell"]], cwd=scratch, capture_output=True, text=True,
                             env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(scratch)})  # fmt: skip
        assert run.returncode == 0, (command["shell"], run.stderr)
    assert not any(m.exists() for m in markers), "a pasted command ran code from a name"
    assert set(tmp_path.iterdir()) == before | ({log} if log.exists() else set())  # nothing written outside
    calls = [block.split("\n") for block in log.read_text().strip("\n").split("\n\n")]
    for command, argv in zip(commands, calls, strict=True):
        expected = [a.replace("$CIVITAI_API_TOKEN", "") for a in command["argv"]]
        assert argv == expected  # the shell handed over exactly the argv, nothing split, nothing expanded
        for flag in ("-o", "--out", "--model", "--base", "--inpaint"):
            if flag in argv:
                value = argv[argv.index(flag) + 1]
                assert "/" not in value.rstrip("/") and not value.startswith(("-", ".")), value
                assert len(value.encode()) <= MAX_FILENAME_BYTES, value


@pytest.mark.parametrize("name", ["a\nb.safetensors", "x\x1b[2J\x1b]8;;http://e\x07y", "r\u202egnp.exe",
                                  "q'u\\ote $HOME", "\x85c1\x7f", "tag\U000e0001", "tab\there",
                                  "plain name.safetensors"])  # fmt: skip
def test_a_printed_command_shows_every_character_and_gives_the_shell_the_same_argument(name):
    from advisor.advice.commands import Command, shell_text

    shown = shell_text(Command(["printf", "%s", name]))
    assert terminal_text(shown) == shown  # nothing for a terminal to act on, nothing a printer drops
    pasted = subprocess.run(["bash", "-c", shown], capture_output=True, env={"PATH": "/usr/bin:/bin",
                                                                             "LC_ALL": "C.UTF-8"})  # fmt: skip
    assert pasted.returncode == 0 and pasted.stdout == name.encode("utf-8"), (shown, pasted)


@pytest.mark.parametrize("name, expected", [
    ("../../etc/x.safetensors", "x.safetensors"),
    ("-rf --output=/etc/passwd.safetensors", "passwd.safetensors"),
    ("..\\..\\windows\\evil.ckpt", "evil.ckpt"),
    ("a\x1b[2Jb\u202e.safetensors", "ab.safetensors"),
    ("..", "model.safetensors"),
    ("", "model.safetensors"),
    ("-", "model.safetensors"),
    ("x..y.safetensors", "x_y.safetensors"),
])  # fmt: skip
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_safe_filename_caps_the_length_and_keeps_the_extension():
    name = safe_filename("麦" * 300 + ".safetensors")
    assert name.endswith(".safetensors") and len(name.encode()) <= MAX_FILENAME_BYTES
    name.encode().decode()  # never cut inside a character


def test_terminal_text_removes_sequences_and_shows_controls():
    assert terminal_text(f"a\x1b[2Jb{OSC8}c") == "abclick herec"
    assert terminal_text("x\u202ey\x07z\x9b") == "x\\u202ey\\x07z\\x9b"
    assert terminal_text("tab\there\nline") == "tab here line"
    assert terminal_text("家族 👨‍👩‍👧 ok") == "家族 👨‍👩‍👧 ok"  # joiners inside emoji stay


def test_a_query_longer_than_any_file_name_answers(registry_db):
    env = cli_env(INPAINT_ADVISOR_DB=registry_db)
    for query in ("麦" * 88, "x" * 10_000):
        result = run_cli("lookup", query, "--offline", env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "nothing matched" in result.stdout or "no model matched" in result.stdout or "empty" in result.stdout


def test_queries_that_are_paths_are_never_sent_away(registry_db, serve):
    fake = FakeCivitai([])
    env = cli_env(INPAINT_ADVISOR_DB=registry_db, INPAINT_ADVISOR_CIVITAI_URL=serve(fake))
    for query in ("./missing.safetensors", "~/models/nope.ckpt", "models/sub/x.safetensors", "/abs/none.bin"):
        result = run_cli("lookup", query, env=env)
        assert result.returncode == 2 and "no such file or folder" in result.stderr, result.stderr
    assert fake.requests == []


@pytest.mark.parametrize("query, message", [
    ("a", "too short"), ("!! ", "too short"), ("???", "too short"),
    ("urn:air:sdxl:lora:civitai:1@2", "a LoRA, not a checkpoint"),
    ("https://huggingface.co/spaces/someone/demo", "a Space"),
    ("https://huggingface.co/datasets/someone/data", "a dataset"),
])  # fmt: skip
def test_meaningless_or_wrong_kind_queries_are_usage_errors(registry_db, query, message):
    result = run_cli("lookup", query, "--offline", env=cli_env(INPAINT_ADVISOR_DB=registry_db))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    as_json = run_cli("lookup", query, "--offline", "--json", env=cli_env(INPAINT_ADVISOR_DB=registry_db))
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"]["code"] == "bad-query"


def test_a_query_that_is_not_utf8_is_one_usage_line_never_a_codec_error(registry_db):
    env = cli_env(INPAINT_ADVISOR_DB=registry_db)
    query = b"a\x9bb\x1b[31m".decode("utf-8", "surrogateescape")  # bytes a shell passes on as they are
    for args in (["lookup", query], ["build", query, "--dry-run", "--offline"]):
        result = run_cli(*args, "--json", env=env, fresh=True)  # fresh: argv as the kernel hands it over
        error = json.loads(result.stdout)["error"]
        assert result.returncode == 2 and error["code"] == "bad-query", result.stdout
        assert "not valid UTF-8: a\\x9bb\\x1b[31m" in error["message"] and "codec" not in error["message"]


def test_a_version_of_another_model_or_none_is_an_error(hostile):
    env, _, _ = hostile
    other = run_cli("lookup", "civitai:910001@9100020", "--offline", env=env)
    assert other.returncode == 1 and "belongs to Quote Breaker (civitai:910002)" in other.stderr, other.stderr
    none = run_cli("lookup", "civitai:910001@1", "--offline", "--json", env=env)
    assert none.returncode == 1 and "has no version 1" in json.loads(none.stdout)["error"]["message"]



def test_candidates_listed_for_a_name_print_crafted_names_as_text(tmp_path, registry_db, serve):
    """Two close strangers' names: the candidates table (score, downloads) shows them as text, JSON too."""
    items = [_item(920001, "Twin\x1b[2J [bold]Mix[/] A", creator=f"\x1b[31mred{OSC8}"),
             _item(920002, "Twin\x1b[2J [bold]Mix[/] B", creator="\u202eredda")]  # fmt: skip
    for it in items:
        it["stats"]["downloadCount"] = 500
    env = cli_env(INPAINT_ADVISOR_DB=registry_db, INPAINT_ADVISOR_CIVITAI_URL=serve(FakeCivitai(items)))
    assert run_cli("crawl", "civitai", env=env).returncode == 0
    table = run_cli("lookup", "twin 2j bold mix", "--offline", env=env)
    assert table.returncode == 1 and "Several models match" in table.stdout, table.stdout
    assert _clean(table.stdout + table.stderr) and "[bold]Mix[/]" in table.stdout.replace("\n", "")
    assert "evil.example" not in table.stdout
    as_json = run_cli("lookup", "twin 2j bold mix", "--offline", "--json", env=env)
    listed = json.loads(as_json.stdout)["candidates"]
    assert {c["model_id"] for c in listed} == {"civitai:920001", "civitai:920002"}
    assert all(c["downloads"] == 500 for c in listed)


@pytest.mark.parametrize("query, said", [
    ("civitai:-1", "not a Civitai model id"), ("civitai:12@x", "not a Civitai model id"),
    ("civitai:", "not a Civitai model id"), ("hf:a/b/c", "not a Hugging Face repo"), ("hf:", "not a Hugging Face repo"),
])  # fmt: skip
def test_a_prefix_that_says_what_a_query_is_is_never_searched_for_as_a_name(query, said):
    from advisor.advice.query import QueryError, parse_query

    with pytest.raises(QueryError, match=said):
        parse_query(query)


def test_a_strangers_long_name_is_shortened_on_screen_and_whole_in_json():
    import io

    from rich.console import Console

    from advisor.advice import ladder
    from advisor.advice.lookup import LookupResult, Match
    from advisor.cli import render

    name = "Mega Merge " + "of everything " * 30 + "V6.0 B1"
    version = "v2 " + "x" * 200
    match = Match("civitai", "civitai:1", "civitai:v1", name, "uploader" * 20, "SD 1.5", "sd1", False, version)
    r = LookupResult(name, match, recommendation=ladder.Recommendation("build", "Build one."))
    out = io.StringIO()
    render.lookup_result(Console(file=out, width=400), r)
    head = out.getvalue().splitlines()[0]
    assert len(head) < 260 and head.startswith("Mega Merge of everything") and "V6.0 B1 — v2 " in head
    assert "…" in head


def test_a_strangers_long_name_is_shortened_in_the_reasons_too():
    from advisor.advice import ladder

    name = "Zebrastripe " + "Ultra " * 60 + "V3"
    rec, alternatives, _ = ladder.recommend(ladder.Subject(name, "sd1", tags=["anime"]))
    build = next(r for r in [rec, *alternatives] if r.kind == "build")
    assert name not in build.reason and "Zebrastripe Ultra" in build.reason and "…" in build.reason
    assert build.reason.count("Ultra") < 20 and "Ultra V3 itself" in build.reason
