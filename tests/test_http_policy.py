"""One redirect policy and no secret in any message: what a hostile server may try against a download or a
header proof (crawler.http.open_redirected) and against the CLI's output."""

import json

import httpx
import pytest

from crawler.http import ApiError, RedirectError, credentials_allowed, open_redirected, scrub
from tests.conftest import cli_env, run_cli
from tests.local_server import FakeApiHandler, LocalServer

TOKEN = "civitai-token-0123456789"


class Hostile(FakeApiHandler):
    """``/to?url=X`` redirects to X; ``/loop`` to itself; ``/echo`` answers 401 with the Authorization header
    in its body; every request's path and Authorization header are logged on the class."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/to?url="):
            from urllib.parse import unquote

            self._send(302, b"", headers={"Location": unquote(self.path[len("/to?url="):])})
        elif self.path == "/loop":
            self._send(302, b"", headers={"Location": "/loop"})
        elif self.path.startswith("/echo"):  # (a crawl asks /echo/api/v1/models?...)
            body = json.dumps({"error": f"bad credentials: {self.headers.get('Authorization')}"}).encode()
            self._send(401, body)
        else:
            self._send(200, b"model bytes", "application/octet-stream")


@pytest.fixture
def two_servers():
    Hostile.seen = []
    with LocalServer(Hostile) as first, LocalServer(Hostile) as second:
        yield first, second


def _get(url):
    with httpx.Client(timeout=10) as client:
        response = open_redirected(client, url, {}, TOKEN)
        response.close()
        return response


def test_the_token_goes_to_the_host_asked_only(two_servers):
    first, second = two_servers
    _get(f"{first}/to?url={second}/file")  # another port: another origin
    assert Hostile.seen == [("/to?url=" + f"{second}/file", f"Bearer {TOKEN}"), ("/file", None)]


def test_credentials_never_cross_a_scheme_downgrade_or_go_over_plain_http_to_a_remote_host():
    assert credentials_allowed("https://civitai.red/api/download/models/1", "https://civitai.red/x")
    assert not credentials_allowed("https://civitai.red/api/download/models/1", "http://civitai.red/x")  # downgrade
    assert not credentials_allowed("https://civitai.red/a", "https://cdn.civitai.red/a")  # another host
    assert not credentials_allowed("https://civitai.red/a", "https://civitai.red:8443/a")  # another port
    assert not credentials_allowed("http://mirror.example/a", "http://mirror.example/b")  # plain http, remote
    assert credentials_allowed("http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b")  # a local mirror


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/"])
def test_only_http_redirects_are_followed_and_a_bad_one_is_not_retried(two_servers, target):
    first, _ = two_servers
    with pytest.raises(RedirectError) as refused:
        _get(f"{first}/to?url={target}")
    assert refused.value.kind == "bad-scheme" and len(Hostile.seen) == 1


def test_a_worker_can_refuse_redirects_to_private_addresses(two_servers, monkeypatch):
    first, second = two_servers
    assert _get(f"{first}/to?url={second}/file").status_code == 200  # off by default: local mirrors work
    monkeypatch.setenv("INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS", "1")
    with pytest.raises(RedirectError) as refused:
        _get(f"{first}/to?url={second}/file")
    assert refused.value.kind == "private-address"


def test_a_redirect_loop_ends(two_servers):
    first, _ = two_servers
    with pytest.raises(RedirectError) as refused:
        _get(f"{first}/loop")
    assert refused.value.kind == "too-many" and len(Hostile.seen) == 6  # the first request and 5 redirects


def test_a_token_echoed_by_a_server_is_never_shown(two_servers, monkeypatch):
    first, _ = two_servers
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        response = client.get(f"{first}/echo")
    error = ApiError(response.status_code, f"{first}/echo", response.text)
    assert TOKEN in response.text and TOKEN not in str(error) and "***" in str(error)
    assert scrub("postgresql+psycopg://crawler:hunter2secret@db.example/reg") == (
        "postgresql+psycopg://crawler:***@db.example/reg")  # fmt: skip


def test_the_cli_never_prints_a_configured_secret_whatever_a_server_sent(tmp_path):
    """A Civitai that echoes the token in its error body: neither the message nor the JSON holds it."""
    Hostile.seen = []
    with LocalServer(Hostile) as url:
        env = cli_env(CIVITAI_API_TOKEN=TOKEN, INPAINT_ADVISOR_CIVITAI_URL=f"{url}/echo",
                      INPAINT_ADVISOR_DB=str(tmp_path / "r.db"))  # fmt: skip
        for extra in ([], ["--json"]):
            done = run_cli("crawl", "civitai", "--max-pages", "1", *extra, env=env, timeout=60)
            assert TOKEN not in done.stdout + done.stderr
    assert any(auth == f"Bearer {TOKEN}" for _, auth in Hostile.seen)  # the server did get it, and echoed it
