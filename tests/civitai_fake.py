"""A local stand-in for civitai.com's REST API, served over real HTTP on 127.0.0.1.

It reproduces what the crawler must survive (domain.md section 1): cursor-only pagination whose ``Oldest``
sort repeats an item across page boundaries, PG-only results without ``nsfw=true``, 400 on a malformed
cursor, the ``period`` filter, and injected faults (429, 5xx with or without ``Retry-After``, HTML edge pages).
Used by the tests and by ``benchmarks/bench_crawl.py``.
"""

import base64
import json
import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.local_server import FakeApiHandler, LocalServer

FIXTURES = Path(__file__).parent / "fixtures"
# a version whose creator disabled downloads: fake.downloads[vid] = (DISABLED, False)
DISABLED = "disabled"
DOWNLOADS_DISABLED = {"error": "Unauthorized", "message": "The creator has disabled downloads on this file"}
LOGIN_WALL = {"error": "Unauthorized", "message": "The creator of this asset requires you to be logged in to download "
              "it"}  # fmt: skip
HTML_ERROR = b"<!DOCTYPE html><html><head><title>504 Gateway Time-out</title></head><body>cloudflare</body></html>"


def load_fixture(name: str = "civitai_models.json") -> list[dict]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _last_version_time(item: dict) -> str:
    times = [v.get("publishedAt") or v.get("createdAt") or "" for v in item.get("modelVersions") or []]
    return max((t.rstrip("Z") for t in times), default="")


@dataclass
class Fault:
    status: int  # 429, 500, 503, ... or 200 with an HTML body
    html: bool = False
    retry_after: str | None = None


@dataclass
class FakeCivitai:
    items: list[dict]
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 20, tzinfo=UTC))
    duplicate_at_boundary: bool = True
    faults: list[Fault] = field(default_factory=list)
    # Hold the request for page N (0-based) until released: a deterministic moment to kill a crawler.
    hold_page: int | None = None
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[dict] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    # /api/download/models/{version id} (or "{version id}?fileId={file id}", one file of it) -> the signed
    # storage URL it redirects to (307), and whether it needs a token (401 with Civitai's login-wall body otherwise)
    downloads: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # /api/v1/model-files/{file id}/tensor-metadata -> the tensors Civitai parsed from the file's header
    # ([{"name", "shape", "dtype", "sizeBytes"}], its API's shape), or DISABLED (403); 404 for the rest
    tensor_metadata: dict[str, object] = field(default_factory=dict)
    # /api/v1/enums' BaseModel list (None: the endpoint answers 404, as an older replay would)
    enums: list[str] | None = None
    # civitai.com since the April 2026 split, as some clients report it: NSFW models are not listed even with
    # nsfw=true (civitai.red lists everything)
    sfw_only: bool = False

    def __post_init__(self):
        self.items = sorted(self.items, key=lambda i: (_last_version_time(i), i["id"]))
        self._lock = threading.Lock()
        self._cache: dict[tuple, bytes] = {}

    # -- the API --------------------------------------------------------------------------------------------
    def models_page(self, query: dict[str, list[str]], base: str) -> tuple[int, bytes]:
        one = {k: v[-1] for k, v in query.items()}
        limit = min(int(one.get("limit", "100")), 100)
        key = (tuple(sorted((k, tuple(v)) for k, v in query.items())), base)
        cached = self._cache.get(key)
        if cached is not None:
            return 200, cached
        items = [
            i
            for i in self.items
            if "Checkpoint" in query.get("types", ["Checkpoint"]) and i.get("type") == "Checkpoint"
        ]
        if one.get("nsfw") != "true" or self.sfw_only:
            items = [i for i in items if not i.get("nsfw")]  # the real server's silent PG-only default
        period = one.get("period")
        if period and period != "AllTime":
            span = {"Day": 1, "Week": 7, "Month": 31, "Year": 365}[period]
            cutoff = (self.now - timedelta(days=span)).replace(tzinfo=None).isoformat()
            items = [i for i in items if _last_version_time(i) >= cutoff]
        start = 0
        if "cursor" in one:
            try:
                start = int(base64.urlsafe_b64decode(one["cursor"].encode()).decode().split("|")[0])
            except (ValueError, UnicodeDecodeError):
                return 400, json.dumps({"error": "Invalid cursor"}).encode()
            if self.duplicate_at_boundary and start > 0:
                start -= 1  # "Oldest" repeats the previous page's last item
        page = items[start : start + limit]
        end = start + limit
        metadata = {}
        if end < len(items):
            cursor = base64.urlsafe_b64encode(f"{end}|{items[end - 1]['id']}".encode()).decode()
            metadata = {"nextCursor": cursor, "nextPage": f"{base}/api/v1/models?cursor={cursor}&limit={limit}"}
        body = json.dumps({"items": page, "metadata": metadata}).encode()
        self._cache[key] = body
        return 200, body

    def page_index(self, query: dict[str, list[str]]) -> int:
        if "cursor" not in query:
            return 0
        try:
            start = int(base64.urlsafe_b64decode(query["cursor"][-1].encode()).decode().split("|")[0])
        except ValueError:
            return -1
        return start // min(int(query.get("limit", ["100"])[-1]), 100)


class _Handler(FakeApiHandler):
    fake: FakeCivitai

    def do_GET(self):
        fake = self.fake
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with fake._lock:
            fake.requests.append({"path": parts.path, "query": query})
            if self.headers.get("Authorization"):
                fake.auth_headers.append(self.headers["Authorization"])
            fault = fake.faults.pop(0) if fake.faults and parts.path.startswith("/api/v1/models") else None
        if fault is not None:
            if fault.html:
                return self._send(fault.status, HTML_ERROR, "text/html")
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return self._send(fault.status, json.dumps({"error": "Too many requests"}).encode(), headers=headers)
        if parts.path == "/api/v1/models":
            if fake.hold_page is not None and fake.page_index(query) == fake.hold_page:
                fake.holding.set()
                fake.release.wait(timeout=30)
            base = f"http://{self.headers.get('Host')}"
            status, body = fake.models_page(query, base)
            return self._send(status, body)
        if parts.path.startswith("/api/download/models/"):
            version = parts.path.rsplit("/", 1)[-1]
            file_id = query.get("fileId", [None])[-1]
            # "<version>?fileId=<file>" pins a file; the version alone gets whatever the key's preferences pick
            target = fake.downloads.get(f"{version}?fileId={file_id}") if file_id else None
            target = target or fake.downloads.get(version)
            if target is None:
                return self._send(404, json.dumps({"error": "Model not found"}).encode())
            location, needs_token = target
            if location == DISABLED:
                return self._send(401, json.dumps(DOWNLOADS_DISABLED).encode())
            if needs_token and not self.headers.get("Authorization"):
                return self._send(401, json.dumps(LOGIN_WALL).encode())
            return self._send(307, b"", headers={"Location": location})
        if parts.path == "/api/v1/enums" and fake.enums is not None:
            body = {"ModelType": ["Checkpoint", "LORA"], "BaseModel": fake.enums, "ActiveBaseModel": fake.enums}
            return self._send(200, json.dumps(body).encode())
        if parts.path.startswith("/api/v1/model-files/") and parts.path.endswith("/tensor-metadata"):
            listed = fake.tensor_metadata.get(parts.path.split("/")[4])
            if listed is None:
                return self._send(404, json.dumps({"error": "File not found"}).encode())
            if listed == DISABLED:
                return self._send(403, json.dumps({"error": "Downloads are disabled for this file"}).encode())
            body = {"format": "SafeTensor", "tensorCount": len(listed), "tensors": listed}
            return self._send(200, json.dumps(body).encode())
        if parts.path.startswith("/api/v1/models/"):
            wanted = parts.path.rsplit("/", 1)[-1]
            for item in fake.items:
                if str(item["id"]) == wanted:
                    return self._send(200, json.dumps(item).encode())
            return self._send(404, json.dumps({"error": f"No model with id {wanted}"}).encode())
        self._send(404, b'{"error":"Not found"}')


def _do_post(self):
    """POST /api/v1/model-versions/by-hash: a JSON array of up to 100 SHA256s in, the matching versions out."""
    fake = self.fake
    path = urlsplit(self.path).path
    length = int(self.headers.get("Content-Length") or 0)
    try:
        wanted = json.loads(self.rfile.read(length) or b"null")
    except ValueError:
        wanted = None
    with fake._lock:
        fake.requests.append({"path": path, "method": "POST", "body": wanted})
    if path != "/api/v1/model-versions/by-hash":
        return self._send(404, b'{"error":"Not found"}')
    if not isinstance(wanted, list) or len(wanted) > 100:
        return self._send(400, json.dumps({"error": "Expected an array of at most 100 hashes"}).encode())
    wanted = {str(h).upper() for h in wanted}
    found = []
    for item in fake.items:
        for v in item.get("modelVersions") or []:
            if any(str((f.get("hashes") or {}).get("SHA256", "")).upper() in wanted for f in v.get("files") or []):
                found.append({**v, "modelId": item["id"], "model": {"name": item["name"], "type": item["type"],
                                                                    "nsfw": item.get("nsfw", False)}})
    self._send(200, json.dumps(found).encode())


_Handler.do_POST = _do_post


class Server(LocalServer):
    """``with Server(fake) as url:`` serves ``fake`` on a free 127.0.0.1 port."""

    def __init__(self, fake: FakeCivitai):
        super().__init__(type("Handler", (_Handler,), {"fake": fake}))
        # a client that stops reading early (a header read that has what it needs) closes its connection: not
        # an error worth a traceback
        self.httpd.handle_error = lambda request, address: None


# -- a synthetic catalogue with realistic items ---------------------------------------------------------------
_BASES = [
    "SD 1.5",
    "SD 1.5",
    "SD 1.5",
    "SDXL 1.0",
    "SDXL 1.0",
    "Pony",
    "Illustrious",
    "Flux.1 D",
    "SD 2.1",
    "NoobAI",
    "SDXL Lightning",
    "Other",
]
_WORDS = [
    "real",
    "vision",
    "dream",
    "shaper",
    "anime",
    "mix",
    "photon",
    "cyber",
    "juggernaut",
    "epic",
    "majic",
    "toon",
    "noob",
    "pony",
    "flux",
    "aether",
    "velvet",
    "zavy",
    "chroma",
    "analog",
]


def synthetic_item(i: int, rng: random.Random, start: datetime) -> dict:
    name = " ".join(rng.choice(_WORDS).title() for _ in range(2)) + f" {i}"
    base = rng.choice(_BASES)
    inpaint = rng.random() < 0.05
    versions = []
    for n in range(2):
        vid = i * 10 + n
        when = start + timedelta(minutes=i * 3 + n)
        vname = f"v{n + 1}.0" + ("-inpainting" if inpaint and n == 0 else "")
        files = []
        for k, (ftype, fmt) in enumerate(
            [("Model", "SafeTensor"), ("Pruned Model", "SafeTensor"), ("VAE", "PickleTensor")]
        ):
            sha = f"{rng.getrandbits(256):064X}"
            files.append(
                {
                    "id": vid * 10 + k,
                    "sizeKB": round(rng.uniform(2e6, 7e6), 4),
                    "name": f"{name.replace(' ', '')}_{vname}.safetensors",
                    "type": ftype,
                    "pickleScanResult": "Success",
                    "pickleScanMessage": "No Pickle imports",
                    "virusScanResult": "Success",
                    "scannedAt": when.isoformat() + "Z",
                    "metadata": {"format": fmt, "size": "pruned", "fp": "fp16"},
                    "hashes": {
                        "AutoV1": sha[:8],
                        "AutoV2": sha[:10],
                        "SHA256": sha,
                        "CRC32": sha[-8:],
                        "BLAKE3": sha.lower(),
                        "AutoV3": sha[10:22],
                    },
                    "downloadUrl": f"https://civitai.com/api/download/models/{vid}?type={ftype}",
                    **({"primary": True} if k == 0 else {}),
                }
            )
        images = [
            {
                "url": f"https://image.civitai.com/x/{vid}-{m}.jpeg",
                "nsfwLevel": 1,
                "width": 832,
                "height": 1216,
                "hash": "U7Fi~w~q0000",
                "type": "image",
                "hasMeta": True,
                "meta": {
                    "seed": rng.getrandbits(32),
                    "steps": 30,
                    "sampler": "DPM++ 2M Karras",
                    "cfgScale": 7,
                    "prompt": "masterpiece, best quality, portrait of a woman, detailed skin, soft light, 85mm",
                    "negativePrompt": "worst quality, low quality, blurry",
                },
            }
            for m in range(4)
        ]
        versions.append(
            {
                "id": vid,
                "modelId": i,
                "name": vname,
                "createdAt": when.isoformat() + "Z",
                "updatedAt": when.isoformat() + "Z",
                "publishedAt": when.isoformat() + ("Z" if n else ""),
                "trainedWords": [],
                "baseModel": base,
                "baseModelType": "Inpainting" if inpaint and n == 0 else "Standard",
                "availability": "Public",
                "description": "<p>Changelog: better hands.</p>",
                "stats": {"downloadCount": rng.randint(0, 90000), "ratingCount": 0, "rating": 0, "thumbsUpCount": 12},
                "files": files,
                "images": images,
                "downloadUrl": f"https://civitai.com/api/download/models/{vid}",
            }
        )
    versions.reverse()  # the API lists the newest version first
    return {
        "id": i,
        "name": name,
        "description": "<p>" + "A versatile model. " * 20 + "</p>",
        "allowNoCredit": True,
        "allowCommercialUse": ["Image", "RentCivit"],
        "allowDerivatives": True,
        "allowDifferentLicense": True,
        "type": "Checkpoint",
        "minor": False,
        "poi": False,
        "nsfw": rng.random() < 0.3,
        "nsfwLevel": 3,
        "cosmetic": None,
        "stats": {
            "downloadCount": rng.randint(0, 200000),
            "favoriteCount": 0,
            "thumbsUpCount": 40,
            "thumbsDownCount": 0,
            "commentCount": 3,
            "ratingCount": 0,
            "rating": 0,
        },
        "creator": {"username": f"creator{i % 997}", "image": None},
        "tags": ["base model", "photorealistic"] + (["inpainting"] if inpaint else []),
        "modelVersions": versions,
    }


def synthetic_catalogue(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    start = datetime(2023, 1, 1)
    return [synthetic_item(i, rng, start) for i in range(1, n + 1)]
