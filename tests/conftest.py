import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.civitai_fake import FakeCivitai, Server
from tests.hf_fake import FakeHub, HubServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def serve():
    """``url = serve(fake)``: run a fake Civitai or Hugging Face Hub on 127.0.0.1 for the rest of the test."""
    servers = []

    def start(fake: FakeCivitai | FakeHub) -> str:
        server = HubServer(fake) if isinstance(fake, FakeHub) else Server(fake)
        servers.append(server)
        return server.__enter__()

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPAINT_ADVISOR_", "CIVITAI_", "HF_"))}
    env.update({"PYTHONPATH": str(ROOT), "COLUMNS": "200", **extra})
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real console entry point in a child process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "advisor", *args], capture_output=True, text=True, env=env or cli_env(), timeout=timeout
    )
