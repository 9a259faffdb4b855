"""A local stand-in for the Hugging Face Hub, served over real HTTP on 127.0.0.1.

It behaves the way domain.md section 3 says the Hub does: ``/api/models`` filters (all must match the repo's
tags), ``expand`` fields only, absolute ``Link: <...>; rel="next"`` pagination; ``/api/models/{repo}`` with
``blobs=true`` sizes and ``lfs.sha256``; 401 "Repository Not Found" with ``X-Error-Code`` for deleted and gated
repos; resolve URLs with ``X-Repo-Commit``, ``ETag``, ``Content-Length`` and byte ranges; and injected faults
(429 with a ``RateLimit`` reset, 5xx, HTML pages).
"""

import base64
import hashlib
import json
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tests.civitai_fake import HTML_ERROR
from tests.local_server import FakeApiHandler, LocalServer
from tests.sd_layouts import checkpoint_shapes

GB = 2**30


def safetensors_header(shapes: dict[str, tuple], dtype: str = "F16") -> bytes:
    """The first bytes of a real safetensors file with these tensors (the data itself is never read)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        kind = dtype
        if shape and isinstance(shape[0], str):  # ("int64", shape): position_ids
            kind, shape = "I64", shape[1]
        n = 8 if kind == "I64" else 2
        for d in shape:
            n *= d
        header[name] = {"dtype": kind, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def sd_file(family: str, variant: str = "normal") -> bytes:
    return safetensors_header(checkpoint_shapes(family, variant, scale=8))


def unet_config(in_channels: int, cross_attention_dim: int) -> bytes:
    return json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": in_channels,
                       "cross_attention_dim": cross_attention_dim}).encode()  # fmt: skip


@dataclass
class FakeFile:
    content: bytes = b""
    size: int | None = None  # what the Hub reports (an LFS file is bigger than the header we serve)
    lfs: bool = True
    hold_after: int | None = None  # send this many body bytes, then wait for the hub's ``release``, once

    @property
    def reported_size(self) -> int:
        return self.size if self.size is not None else len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content + str(self.size).encode()).hexdigest()


@dataclass
class FakeRepo:
    id: str
    last_modified: str = "2025-01-01T00:00:00.000Z"
    created_at: str = "2024-01-01T00:00:00.000Z"
    tags: list[str] = field(default_factory=list)
    card: dict | None = None
    config: dict | None = None
    files: dict[str, FakeFile] = field(default_factory=dict)
    gated: bool = False
    sha: str = ""

    def __post_init__(self):
        if not self.sha:
            self.sha = hashlib.sha1(self.id.encode() + self.last_modified.encode()).hexdigest()

    def touch(self, when: str) -> None:
        """A new commit."""
        self.last_modified = when
        self.sha = hashlib.sha1(self.id.encode() + when.encode()).hexdigest()

    def listing(self, expand: list[str]) -> dict:
        full = {
            "tags": self.tags, "cardData": self.card, "config": self.config, "lastModified": self.last_modified,
            "createdAt": self.created_at, "sha": self.sha, "downloads": 10, "gated": "manual" if self.gated else False,
            "siblings": [{"rfilename": f} for f in self.files], "library_name": "diffusers", "pipeline_tag": None,
        }  # fmt: skip
        out = {"_id": hashlib.md5(self.id.encode()).hexdigest()[:24], "id": self.id}
        out.update({k: full[k] for k in expand if k in full and full[k] is not None})
        return out

    def info(self, blobs: bool) -> dict:
        siblings = []
        for name, f in self.files.items():
            s = {"rfilename": name}
            if blobs:
                s["size"] = f.reported_size
                s["blobId"] = hashlib.sha1(b"blob %d\0" % len(f.content) + f.content).hexdigest()  # git's oid
                if f.lfs:
                    s["lfs"] = {"size": f.reported_size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(s)
        out = {"_id": "x" * 24, "id": self.id, "modelId": self.id, "author": self.id.split("/")[0], "sha": self.sha,
               "lastModified": self.last_modified, "createdAt": self.created_at, "private": False,
               "gated": "manual" if self.gated else False, "disabled": False, "downloads": 10, "likes": 1,
               "tags": self.tags, "siblings": siblings}  # fmt: skip
        if self.card is not None:
            out["cardData"] = self.card
        if self.config is not None:
            out["config"] = self.config
        return out


@dataclass
class Fault:
    status: int
    html: bool = False
    ratelimit_reset: int | None = None  # seconds, sent as RateLimit: "api";r=0;t=<s>
    path_prefix: str = "/api/"


@dataclass
class FakeHub:
    repos: list[FakeRepo]
    faults: list[Fault] = field(default_factory=list)
    page_limit: int | None = None  # cap ``limit`` to force several pages
    requests: list[str] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    # LFS files answered as the real Hub does: 302 to a CDN URL, the redirect carrying X-Linked-Etag and
    # X-Linked-Size (the file's sha256 and size), X-Repo-Commit; the CDN serves the bytes with ranges
    cdn_redirects: bool = False
    hold_list_page: int | None = None  # hold the Nth listing request (0-based) until released
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._list_requests = 0

    def repo(self, repo_id: str) -> FakeRepo | None:
        return next((r for r in self.repos if r.id.lower() == repo_id.lower()), None)

    def list_models(self, query: dict[str, list[str]], base: str) -> tuple[list[dict], str | None]:
        filters = query.get("filter", [])
        pipeline = query.get("pipeline_tag", [None])[-1]
        found = [r for r in self.repos if all(f in r.tags for f in filters)]
        if pipeline:
            found = [r for r in found if pipeline in r.tags]
        found.sort(key=lambda r: (r.last_modified, r.id), reverse=query.get("direction", ["-1"])[-1] == "-1")
        limit = int(query.get("limit", ["1000"])[-1])
        if self.page_limit:
            limit = min(limit, self.page_limit)
        start = int(base64.urlsafe_b64decode(query["cursor"][-1]).decode()) if "cursor" in query else 0
        page = found[start : start + limit]
        next_url = None
        if start + limit < len(found):
            cursor = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
            rest = [(k, v) for k, vs in query.items() if k != "cursor" for v in vs] + [("cursor", cursor)]
            next_url = f"{base}/api/models?{urlencode(rest)}"
        return [r.listing(query.get("expand", [])) for r in page], next_url


class _Handler(FakeApiHandler):
    hub: FakeHub

    def _error(self, status: int, code: str, message: str):
        self._send(status, json.dumps({"error": message}).encode(), headers={"X-Error-Code": code,
                                                                            "X-Error-Message": message})  # fmt: skip

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        hub = self.hub
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with hub._lock:
            hub.requests.append(self.path)
            if self.headers.get("Authorization"):
                hub.auth_headers.append(self.headers["Authorization"])
            fault = next((f for f in hub.faults if path.startswith(f.path_prefix)), None)
            if fault is not None:
                hub.faults.remove(fault)
            list_index = None
            if path == "/api/models":
                list_index, hub._list_requests = hub._list_requests, hub._list_requests + 1
        if fault is not None:
            if fault.html:
                return self._send(fault.status, HTML_ERROR, "text/html")
            headers = {}
            if fault.ratelimit_reset is not None:
                headers["RateLimit"] = f'"api";r=0;t={fault.ratelimit_reset}'
                headers["RateLimit-Policy"] = '"fixed window";"api";q=500;w=300'
            return self._send(fault.status, json.dumps({"error": "rate limited"}).encode(), headers=headers)
        if path == "/api/models":
            if hub.hold_list_page is not None and list_index == hub.hold_list_page:
                hub.holding.set()
                hub.release.wait(timeout=30)
            items, next_url = hub.list_models(query, f"http://{self.headers.get('Host')}")
            headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
            return self._send(200, json.dumps(items).encode(), headers=headers)
        if path.startswith("/api/models/"):
            repo = hub.repo(path[len("/api/models/") :])
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository Not Found")
            return self._send(
                200, json.dumps(repo.info(query.get("blobs", [""])[-1] in ("True", "true", "1"))).encode()
            )
        if "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            repo = hub.repo(repo_id)
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository Not Found")
            _rev, file_path = rest.split("/", 1)
            if repo.gated and not self.headers.get("Authorization"):
                return self._error(401, "GatedRepo", "Access to this model is restricted")
            f = repo.files.get(file_path)
            if f is None:
                return self._error(404, "EntryNotFound", "Entry not found")
            if hub.cdn_redirects and f.lfs:
                return self._send(302, b"", headers={
                    "Location": f"/cdn-lfs/{repo.id}/{f.sha256}?name={file_path}", "X-Repo-Commit": repo.sha,
                    "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.reported_size), "ETag": '"pointer"'},
                )  # fmt: skip
            return self._file(f, {"X-Repo-Commit": repo.sha, "ETag": f'"{f.sha256}"'})
        if path.startswith("/cdn-lfs/"):
            repo_id, sha = path[len("/cdn-lfs/") :].rsplit("/", 1)
            repo = hub.repo(repo_id)
            f = next((f for f in (repo.files.values() if repo else []) if f.sha256 == sha), None)
            if f is None:
                return self._send(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
            return self._file(f, {"ETag": f'"{f.sha256}"'})
        self._error(404, "NotFound", "Not found")

    def _file(self, f: FakeFile, headers: dict):
        body, status = f.content, 200
        if rng := self.headers.get("Range"):
            start, _, end = rng.removeprefix("bytes=").partition("-")
            start, end = int(start), min(int(end) if end else len(body) - 1, len(body) - 1)
            body, status = body[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.reported_size}"
        if f.hold_after is not None and self.command != "HEAD":  # part of the body, a wait, then the connection goes
            cut, f.hold_after = f.hold_after, None
            self.send_response(status)
            sent = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body)), **headers}
            for k, v in sent.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.hub.holding.set()
            self.hub.release.wait(timeout=60)
            self.close_connection = True
            return None
        return self._send(status, body, "application/octet-stream", headers)


class HubServer(LocalServer):
    """``with HubServer(fake) as url:`` serves ``fake`` on a free 127.0.0.1 port."""

    def __init__(self, hub: FakeHub):
        super().__init__(type("Handler", (_Handler,), {"hub": hub}))


# -- fixtures: a small Hub with the cases the crawler must get right ------------------------------------------
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


def diffusers_repo(repo_id: str, in_channels: int, width: int, **kw) -> FakeRepo:
    cls = "StableDiffusionXLPipeline" if width == 2048 else "StableDiffusionPipeline"
    files = {
        "model_index.json": FakeFile(json.dumps({"_class_name": cls}).encode(), lfs=False),
        "unet/config.json": FakeFile(unet_config(in_channels, width), lfs=False),
        "unet/diffusion_pytorch_model.fp16.safetensors": FakeFile(b"\0" * 64, size=3 * GB),
    }
    return FakeRepo(repo_id, files=files, config={"diffusers": {"_class_name": cls}}, **kw)


def single_file_repo(repo_id: str, files: dict[str, tuple[str, str]], **kw) -> FakeRepo:
    """``files``: name -> (family, variant) of a single-file checkpoint served as a real safetensors header."""
    return FakeRepo(repo_id, files={name: FakeFile(sd_file(fam, var), size=2 * GB) for name, (fam, var) in
                                    files.items()}, **kw)  # fmt: skip


def lineage_tags(base: str, relation: str = "finetune", library: str | None = "diffusers") -> list[str]:
    tags = [f"base_model:{base}", f"base_model:{relation}:{base}", "text-to-image", "stable-diffusion"]
    return tags + ([library, f"diffusers:{'StableDiffusionXLPipeline' if 'xl' in base else 'StableDiffusionPipeline'}"]
                   if library else [])  # fmt: skip


def official_repos() -> list[FakeRepo]:
    """The official mirrors named in data/families.json, with the exact files, sizes and sha256 data/ expects."""
    from data import load

    repos = []
    for fam in load("families")["families"]:
        for role in ("inpaint", "base"):
            spec = fam.get(role)
            for mirror in (spec or {}).get("mirrors", []):
                if not mirror["alive"] or any(r.id == mirror["repo"] for r in repos):
                    continue
                files = {"model_index.json": FakeFile(b"{}", lfs=False)}
                if spec.get("file"):
                    files[spec["file"]] = ExactFile(spec.get("size"), spec.get("sha256"))
                repos.append(FakeRepo(mirror["repo"], files=files, tags=["diffusers"]))
    return repos


class ExactFile(FakeFile):
    """A file the Hub reports with a given size and sha256 (the real official checkpoints)."""

    def __init__(self, size: int | None, sha256: str | None):
        super().__init__(b"", size=size or GB)
        self._sha = sha256

    @property
    def sha256(self) -> str:
        return self._sha or super().sha256


def fixture_hub() -> list[FakeRepo]:
    return [
        # a diffusers fine-tune of SD 1.5, lineage as a string, and its separate inpainting repo
        diffusers_repo("dreamer/dreamvision", 4, 768, tags=lineage_tags(SD15), card={"base_model": SD15},
                       last_modified="2025-03-01T00:00:00.000Z"),
        diffusers_repo("dreamer/dreamvision-inpainting", 9, 768,
                       tags=lineage_tags(SD15) + ["diffusers:StableDiffusionInpaintPipeline"],
                       card={"base_model": SD15}, last_modified="2025-03-02T00:00:00.000Z"),
        # tagged as an inpaint pipeline but the UNet has 4 channels: a hint, not proof
        diffusers_repo("misc/not-really-inpaint", 4, 768,
                       tags=lineage_tags(SD15) + ["diffusers:StableDiffusionInpaintPipeline"],
                       card={"base_model": [SD15]}, last_modified="2025-02-01T00:00:00.000Z"),
        # SDXL merge, base_model as a list, no cardData at all on a second repo
        diffusers_repo("xlfan/xl-merge", 4, 2048, tags=lineage_tags(SDXL, "merge"),
                       card={"base_model": [SDXL, "someone/other-xl"], "base_model_relation": "merge"},
                       last_modified="2025-04-01T00:00:00.000Z"),
        diffusers_repo("xlfan/no-card", 4, 2048, tags=lineage_tags(SDXL), last_modified="2025-04-02T00:00:00.000Z"),
        # single-file repo: a normal checkpoint and its inpainting file, proven by header shapes
        single_file_repo("painter/realmix", {"realmix_v2.safetensors": ("sd1", "normal"),
                                              "realmix_v2-inpainting.safetensors": ("sd1", "inpaint")},
                         tags=lineage_tags(SD15, library=None), card={"base_model": SD15},
                         last_modified="2025-05-01T00:00:00.000Z"),
        # a fine-tune of a fine-tune: its family comes through dreamer/dreamvision
        diffusers_repo("fan/dreamvision-remix", 4, 768, tags=lineage_tags("dreamer/dreamvision"),
                       card={"base_model": "dreamer/dreamvision"}, last_modified="2025-06-01T00:00:00.000Z"),
        # no lineage, no model_index.json: found through the diffusers inpaint-pipeline listing, header proves it
        single_file_repo("loner/plain-inpaint", {"model.safetensors": ("sdxl", "inpaint")},
                         tags=["diffusers:StableDiffusionXLInpaintPipeline"], last_modified="2025-01-15T00:00:00.000Z"),
        # gated: the files cannot be read without a token; recorded, not fatal
        diffusers_repo("vault/gated-xl", 4, 2048, tags=lineage_tags(SDXL), card={"base_model": SDXL}, gated=True,
                       last_modified="2025-04-03T00:00:00.000Z"),
        # a LoRA listed under the base: skipped
        FakeRepo("lora/style", tags=lineage_tags(SD15) + ["lora"], files={"lora.safetensors": FakeFile(b"x")},
                 last_modified="2025-04-04T00:00:00.000Z"),
    ] + official_repos()  # fmt: skip


def point_official_pair(monkeypatch, family: str, inpaint: tuple[str, str, bytes], base: tuple[str, str, bytes]):
    """The bundled data's official pair of ``family`` pointed at fake Hub files: (repo, file, the file's bytes)
    each, with their true size and sha256."""
    import copy

    from crawler import families

    fams = copy.deepcopy(families.all_families())
    spec = next(f for f in fams if f["id"] == family)
    for role, (repo, name, content) in (("inpaint", inpaint), ("base", base)):
        spec[role].update(mirrors=[{"repo": repo, "alive": True}], file=name, size=len(content),
                          sha256=hashlib.sha256(content).hexdigest())  # fmt: skip
    monkeypatch.setattr(families, "all_families", lambda: fams)
    monkeypatch.setattr(families, "by_id", lambda: {f["id"]: f for f in fams})
