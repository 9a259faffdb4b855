"""One HTTP layer: one client factory, one redirect policy and no secret in any message: what a hostile server
may try against the JSON client, the Hub's client, a download or a header proof (crawler.http.open_redirected)
and against the CLI's output."""

import ast
import json
from urllib.parse import urlsplit

import httpx
import pytest

from advisor.build import DownloadError, Source, fetch
from crawler.hf.hub import Hub
from crawler.http import (
    MAX_REDIRECTS,
    ApiError,
    JsonClient,
    RedirectError,
    RetriesExhausted,
    RetryPolicy,
    credentials_allowed,
    error_body,
    open_redirected,
    scrub,
    user_agent,
)
from tests.conftest import ROOT, cli_env, run_cli
from tests.local_server import FakeApiHandler, LocalServer

TOKEN = "civitai-token-0123456789"


class Hostile(FakeApiHandler):
    """``/to?url=X`` redirects to X; ``/loop`` to itself; ``/echo`` answers 401 and ``/busy`` 503 with the
    Authorization header in its body; ``/json`` is JSON; every request's path and Authorization header are logged
    on the class."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/to?url="):
            from urllib.parse import unquote

            self._send(302, b"", headers={"Location": unquote(self.path[len("/to?url="):])})
        elif self.path == "/loop":
            self._send(302, b"", headers={"Location": "/loop"})
        elif self.path.startswith(("/echo", "/busy")):  # (a crawl asks /echo/api/v1/models?...)
            body = json.dumps({"error": f"bad credentials: {self.headers.get('Authorization')}"}).encode()
            self._send(503 if self.path.startswith("/busy") else 401, body)
        elif self.path == "/json":
            self._send(200, b'{"ok": true}')
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


# -- one client factory -------------------------------------------------------------------------------------------
def _client_constructions() -> list[tuple[str, str]]:
    """(file, enclosing function) of every ``httpx.Client(`` / ``AsyncClient(`` call in crawler/, advisor/,
    merge/, however httpx or the class was imported."""
    found = []
    for package in ("crawler", "advisor", "merge"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            modules, classes = {"httpx"}, set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules |= {a.asname or a.name for a in node.names if a.name == "httpx"}
                elif isinstance(node, ast.ImportFrom) and node.module == "httpx":
                    classes |= {a.asname or a.name for a in node.names if a.name in ("Client", "AsyncClient")}
            functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
                f = call.func
                if (isinstance(f, ast.Attribute) and f.attr in ("Client", "AsyncClient")
                        and isinstance(f.value, ast.Name) and f.value.id in modules) or (
                        isinstance(f, ast.Name) and f.id in classes):  # fmt: skip
                    inside = [fn for fn in functions if fn.lineno <= call.lineno <= (fn.end_lineno or fn.lineno)]
                    where = max(inside, key=lambda fn: fn.lineno).name if inside else "<module>"
                    found.append((path.relative_to(ROOT).as_posix(), where))
    return found


def test_the_factory_is_the_only_place_an_http_client_is_made():
    assert _client_constructions() == [("crawler/http.py", "new_client")]


# -- the JSON client: the same redirect policy as downloads -------------------------------------------------------
def _json_client(url: str) -> JsonClient:
    return JsonClient(url, token=TOKEN, policy=RetryPolicy(attempts=2, base_delay=0), sleep=lambda _: None)


def test_the_json_client_sends_the_token_to_the_origin_asked_only(two_servers):
    first, second = two_servers
    with _json_client(first) as client:
        assert client.get("/to", params={"url": f"{first}/json"})[0] == {"ok": True}  # the same origin
        assert client.get("/to", params={"url": f"{second}/json"})[0] == {"ok": True}  # another port
    assert [auth for _, auth in Hostile.seen] == [f"Bearer {TOKEN}"] * 3 + [None]
    assert [path for path, _ in Hostile.seen][1::2] == ["/json", "/json"]


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x"])
def test_the_json_client_follows_only_http_redirects_and_does_not_retry_a_bad_one(two_servers, target):
    first, _ = two_servers
    with _json_client(first) as client, pytest.raises(RedirectError) as refused:
        client.get("/to", params={"url": target})
    assert refused.value.kind == "bad-scheme" and len(Hostile.seen) == 1


def test_the_json_client_stops_after_max_redirects(two_servers):
    first, _ = two_servers
    with _json_client(first) as client, pytest.raises(RedirectError) as refused:
        client.get("/loop")
    assert refused.value.kind == "too-many" and len(Hostile.seen) == MAX_REDIRECTS + 1


def test_the_json_client_refuses_private_redirects_when_told(two_servers, monkeypatch):
    first, second = two_servers
    monkeypatch.setenv("INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS", "1")
    with _json_client(first) as client, pytest.raises(RedirectError) as refused:
        client.get("/to", params={"url": f"{second}/json"})
    assert refused.value.kind == "private-address" and len(Hostile.seen) == 1


# -- the Hub's client: huggingface_hub's requests through the factory ---------------------------------------------
class FakeHubApi(FakeApiHandler):
    """``/api/models/moved/repo`` answers 307 to ``target`` (a renamed repo); ``/api/models/echo/repo`` 400
    with the Authorization header in its body; any other ``/api/models/<id>`` the model's info. Each request's
    path, Authorization and User-Agent are logged on the class, and its X-Amzn-Trace-Id (huggingface_hub's
    request hook sets it)."""

    seen: list[dict] = []
    target = ""

    def do_GET(self):
        path = urlsplit(self.path).path
        type(self).seen.append({"path": path, "auth": self.headers.get("Authorization"),
                                "agent": self.headers.get("User-Agent", ""),
                                "trace": self.headers.get("X-Amzn-Trace-Id")})  # fmt: skip
        if path == "/api/models/moved/repo":
            self._send(307, b"", headers={"Location": type(self).target})
        elif path == "/api/models/echo/repo":
            self._send(400, json.dumps({"error": f"bad token {self.headers.get('Authorization')}"}).encode())
        else:
            self._send(200, json.dumps({"id": path.removeprefix("/api/models/"), "sha": "0" * 40}).encode())


@pytest.fixture
def two_hubs():
    FakeHubApi.seen, FakeHubApi.target = [], ""
    with LocalServer(FakeHubApi) as first, LocalServer(FakeHubApi) as second:
        yield first, second


def _hub(url: str) -> Hub:
    return Hub(url, token=TOKEN, policy=RetryPolicy(attempts=2, base_delay=0), sleep=lambda _: None)


def test_huggingface_hub_requests_go_through_our_factory(two_hubs):
    first, _ = two_hubs
    with _hub(first) as hub:
        assert hub.model_info("some/repo").id == "some/repo"
    (request,) = FakeHubApi.seen
    assert request["agent"].startswith(user_agent()) and "hf_hub/" in request["agent"]  # huggingface_hub's kept
    assert request["trace"]  # huggingface_hub's own request hook still runs


def test_a_renamed_repo_is_followed_with_the_token_on_the_same_origin_only(two_hubs):
    first, second = two_hubs
    FakeHubApi.target = "/api/models/new/repo"
    with _hub(first) as hub:
        assert hub.model_info("moved/repo").id == "new/repo"
        FakeHubApi.target = f"{second}/api/models/elsewhere/repo"
        assert hub.model_info("moved/repo").id == "elsewhere/repo"
    assert [(r["path"], r["auth"]) for r in FakeHubApi.seen] == [
        ("/api/models/moved/repo", f"Bearer {TOKEN}"), ("/api/models/new/repo", f"Bearer {TOKEN}"),
        ("/api/models/moved/repo", f"Bearer {TOKEN}"), ("/api/models/elsewhere/repo", None)]  # fmt: skip
    assert all(r["agent"].startswith(user_agent()) for r in FakeHubApi.seen)  # redirects included


@pytest.mark.parametrize("target, kind, requests", [
    ("ftp://127.0.0.1/x", "bad-scheme", 1),
    ("file:///etc/passwd", "bad-scheme", 1),
    ("/api/models/moved/repo", "too-many", MAX_REDIRECTS + 1),
])  # fmt: skip
def test_the_hub_client_follows_redirects_by_the_same_rules(two_hubs, target, kind, requests):
    first, _ = two_hubs
    FakeHubApi.target = target
    with _hub(first) as hub, pytest.raises(RedirectError) as refused:
        hub.model_info("moved/repo")
    assert refused.value.kind == kind and len(FakeHubApi.seen) == requests


def test_the_hub_client_refuses_private_redirects_when_told(two_hubs, monkeypatch):
    first, second = two_hubs
    FakeHubApi.target = f"{second}/api/models/new/repo"
    monkeypatch.setenv("INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS", "1")
    with _hub(first) as hub, pytest.raises(RedirectError) as refused:
        hub.model_info("moved/repo")
    assert refused.value.kind == "private-address" and len(FakeHubApi.seen) == 1


# -- one error-body reader, never a secret ------------------------------------------------------------------------
def test_the_error_body_reader_scrubs_secrets_and_reads_a_bounded_excerpt(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    request = httpx.Request("GET", "http://127.0.0.1/x")
    said = error_body(httpx.Response(401, json={"error": "denied", "message": f"token {TOKEN}"}, request=request))
    assert said == "denied: token ***"
    chunks = []

    def endless():
        while True:
            chunks.append(1)
            yield b"x" * 2**20

    assert error_body(httpx.Response(500, content=endless(), request=request), 20) == "x" * 20 + "…"
    assert len(chunks) == 1  # a hostile error body is not read to its end
    sequences = b"denied \x1b[2J\x1b]8;;http://x\x07link\x1b]8;;\x07 \x1b[31mdone"  # clear, hyperlink, colour
    assert error_body(httpx.Response(403, content=sequences, request=request)) == "denied link done"


@pytest.mark.parametrize("path, raised", [("/echo", ApiError), ("/busy", RetriesExhausted)])
def test_the_json_client_never_shows_a_token_a_server_echoed(two_servers, monkeypatch, path, raised):
    first, _ = two_servers
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    retries: list[str] = []
    with _json_client(first) as client, pytest.raises(raised) as failed:
        client.on_retry = retries.append
        client.get(path)
    assert "bad credentials: Bearer ***" in str(failed.value) and TOKEN not in str(failed.value) + "".join(retries)
    assert Hostile.seen[0][1] == f"Bearer {TOKEN}"  # the server did get it, and echoed it


def test_the_hub_client_never_shows_a_token_a_server_echoed(two_hubs, monkeypatch):
    first, _ = two_hubs
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with _hub(first) as hub, pytest.raises(ApiError) as refused:
        hub.model_info("echo/repo")
    assert refused.value.status == 400 and "bad token Bearer ***" in str(refused.value)
    assert TOKEN not in str(refused.value) and FakeHubApi.seen[0]["auth"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("path, code", [("/echo", "login-wall"), ("/busy", "network")])
def test_a_download_never_shows_a_token_a_server_echoed(two_servers, monkeypatch, tmp_path, path, code):
    first, _ = two_servers
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(DownloadError) as refused:
        fetch(Source(f"{first}{path}", token=TOKEN), tmp_path / "out", policy=RetryPolicy(attempts=2, base_delay=0),
              sleep=lambda _: None)  # fmt: skip
    assert refused.value.code == code and "bad credentials: Bearer ***" in str(refused.value)
    assert TOKEN not in str(refused.value) and Hostile.seen[0][1] == f"Bearer {TOKEN}"


class Endless(FakeApiHandler):
    """``/flood`` (``/flood500``): a chunked JSON answer (a 500) that never ends; ``/drip``: one byte of a JSON
    answer every 50 ms, forever."""

    def do_GET(self):
        import time

        status = 500 if self.path == "/flood500" else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"[" * 65536 if self.path.startswith("/flood") else b"["
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if self.path == "/drip":
                    self.wfile.flush()
                    time.sleep(0.05)
        except OSError:  # the client gave up: what the test wants
            pass


def test_an_answer_that_never_ends_is_refused_past_its_cap_and_its_deadline(monkeypatch):
    import crawler.http

    monkeypatch.setattr(crawler.http, "MAX_JSON_BYTES", 2 * 2**20)
    with LocalServer(Endless) as url:
        client = JsonClient(url, policy=RetryPolicy(attempts=1), timeout=0.5, sleep=lambda s: None)
        with pytest.raises(ApiError, match="over 2 MB: refused"):
            client.get("/flood")
        with pytest.raises(RetriesExhausted, match="HTTP 500"):  # an error's body: its first 64 KiB only
            client.get("/flood500")
        with pytest.raises(RetriesExhausted, match="still arriving when its time was up"):
            client.get("/drip")  # each byte within the read timeout; the whole past 4 x timeout
        client.close()


def test_clients_share_one_loaded_certificate_store_and_a_new_setting_loads_another(monkeypatch, tmp_path):
    from crawler import http

    loads = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(httpx, "create_ssl_context", lambda *a, **kw: loads.append(1) or real(*a, **kw))
    monkeypatch.setattr(http, "_contexts", {})
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for _ in range(3):
        http.new_client().close()
    assert len(loads) == 1
    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # honoured as httpx honours it: a store of its own
    http.new_client().close()
    assert len(loads) == 2


def test_a_certificate_store_that_cannot_be_loaded_is_named(monkeypatch, tmp_path):
    from crawler import http

    monkeypatch.setattr(http, "_contexts", {})
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(http.CertificateStoreError, match=r"SSL_CERT_FILE=.*missing\.pem cannot be loaded \(No such"):
        http.new_client()
    (tmp_path / "not.pem").write_text("not a certificate")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "not.pem"))
    with pytest.raises(http.CertificateStoreError, match=r"not\.pem cannot be loaded"):
        http.new_client()


def test_a_url_no_request_can_go_to_is_one_clear_error():
    from advisor.advice.query import QueryError, parse_query
    from crawler.http import BadURL, new_client

    with pytest.raises(BadURL) as raised:
        new_client(base_url="https://mirror.example:80a")
    assert raised.value.code == "bad-setting" and "not a usable URL" in str(raised.value)
    with pytest.raises(QueryError):
        parse_query("http://[::1")  # urlsplit's ValueError: the query's fault, said as such


def test_a_stall_setting_of_zero_is_the_shortest_window_not_the_default(monkeypatch):
    from advisor.build import download

    monkeypatch.setenv("INPAINT_ADVISOR_STALL_SECONDS", "0")
    assert download._stall_seconds() == 0.1
    monkeypatch.setenv("INPAINT_ADVISOR_STALL_SECONDS", "not a number")
    assert download._stall_seconds() == download.STALL_SECONDS
