"""The suite cannot reach the real Civitai or Hugging Face: every client defaults to a closed local port."""

import httpx
import pytest

from advisor.advice.lookup import NotFound, lookup
from tests.conftest import NOWHERE, cli_env, run_cli


@pytest.mark.parametrize("url", ["https://civitai.com/api/v1/models", "https://huggingface.co/api/models"])
def test_remote_hosts_are_refused(url):
    with pytest.raises(httpx.ConnectError, match="only connect to 127.0.0.1"):
        httpx.get(url, timeout=5)


def test_online_lookups_default_to_nowhere(tmp_path):
    for query in ("civitai:123", "someone/some-model"):
        with pytest.raises(NotFound) as unanswered:
            lookup(query, db=str(tmp_path / "r.db"))
        assert unanswered.value.code == "network" and NOWHERE in str(unanswered.value)
    assert not (tmp_path / "r.db").exists()  # no registry was made for the live attempt
    env = cli_env(INPAINT_ADVISOR_DB=str(tmp_path / "cli.db"))
    assert env["INPAINT_ADVISOR_CIVITAI_URL"] == env["HF_ENDPOINT"] == NOWHERE
    assert NOWHERE in run_cli("lookup", "civitai:123", env=env).stderr  # an id that cannot be looked up: an error
