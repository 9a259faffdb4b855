"""What did the user paste? A Civitai URL, id or AIR URN, a Hugging Face repo, a hash, a local file, or text."""

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from crawler.civitai.hosts import CIVITAI_HOSTS
from crawler.registry import normalize_name
from data.errors import InpaintAdvisorError

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_HASH_KINDS = {8: "autov1", 10: "autov2", 12: "autov3", 64: "sha256"}
_AIR = re.compile(r"^urn:air:(?P<eco>[\w.-]+):(?P<type>[\w.-]+):civitai:(?P<id>\d+)(?:@(?P<vid>\d+))?$", re.I)
_CIVITAI_ID = re.compile(r"^civitai:(?P<id>\d+)(?:@(?P<vid>\d+))?$", re.I)
_HF_REPO = re.compile(r"^(?:hf:)?(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)$")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_AIR_TYPES = {"lora": "a LoRA", "lycoris": "a LyCORIS", "embedding": "an embedding", "vae": "a VAE",
              "controlnet": "a ControlNet", "upscaler": "an upscaler", "hypernet": "a hypernetwork",
              "motionmodule": "a motion module", "wildcards": "a wildcards set", "workflows": "a workflow"}  # fmt: skip
_URL_HOSTS = (*(f"{www}{host}/" for host in CIVITAI_HOSTS for www in ("", "www.")), "huggingface.co/", "hf.co/")
MIN_NAME_CHARS = 2  # letters or digits a name query needs before it can match anything with confidence


class QueryError(InpaintAdvisorError, ValueError):
    """The query cannot be read as any kind of model reference (a usage error)."""

    code = "bad-query"


def shown(q: str, limit: int = 120) -> str:
    """The query as messages quote it: long ones cut."""
    return q if len(q) <= limit else q[:limit] + "…"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for the filesystem, a component that is not a folder, ...
        return False


def _looks_like_path(q: str) -> bool:
    """A local path rather than a name or a Hub repo: starts like one, has a backslash or several slashes,
    or names a checkpoint file inside a folder."""
    if q.startswith((".", "/", "~")) or "\\" in q:
        return True
    return q.count("/") > 1 or ("/" in q and q.lower().endswith(CHECKPOINT_SUFFIXES))


@dataclass
class Query:
    raw: str
    kind: str  # civitai | hf | hash | file | text
    model_id: str | None = None  # Civitai model id
    version_id: str | None = None
    repo: str | None = None
    hash: str | None = None
    hash_kind: str | None = None
    path: Path | None = None
    text: str | None = None


def parse_query(raw: str) -> Query:
    q = raw.strip()
    if not q:
        raise QueryError("empty query: give a model name, a Civitai or Hugging Face URL, a hash or a file")
    path = Path(q).expanduser() if len(q) < 4096 else None
    if path is not None and _exists(path):
        if q.startswith((".", "/", "~")) or path.suffix.lower() in CHECKPOINT_SUFFIXES or path.is_file():
            return Query(raw, "file", path=path)
        if (path / "model_index.json").exists() or (path / "unet").is_dir() or (path / "transformer").is_dir():
            return Query(raw, "file", path=path)
    try:  # a file's name may be any bytes (it was found above); a name, URL or hash is text
        q.encode("utf-8")
    except UnicodeEncodeError:
        bytes_shown = repr(q.encode("utf-8", "surrogateescape"))[2:-1]  # every byte that is not printable, escaped
        raise QueryError(f"not valid UTF-8: {shown(bytes_shown)} (a model name, URL or hash is text; a file's "
                         "name must be of a file that exists)") from None  # fmt: skip
    is_url = "://" in q or q.lower().startswith(_URL_HOSTS)
    if q.lower().startswith("hf:") and not _HF_REPO.match(q):  # a prefix that says what it is: not a path
        raise QueryError(f"not a Hugging Face repo: {shown(q)} (expected hf:AUTHOR/NAME)")
    if not is_url and _looks_like_path(q):
        raise QueryError(f"no such file or folder: {shown(q)}")
    if q.lower().startswith("urn:air:"):
        m = _AIR.match(q)
        if m is None:
            raise QueryError(f"not an AIR of a Civitai model: {shown(q)} "
                             "(expected urn:air:ECOSYSTEM:TYPE:civitai:ID@VERSION)")
        kind = m["type"].lower()
        if kind != "checkpoint":
            what = _AIR_TYPES.get(kind, f"a {kind}")
            raise QueryError(f"{shown(q)} names {what}, not a checkpoint: inpaint-advisor answers for checkpoints "
                             "(models that generate on their own)")  # fmt: skip
        return Query(raw, "civitai", model_id=m["id"], version_id=m["vid"])
    if m := _CIVITAI_ID.match(q):
        return Query(raw, "civitai", model_id=m["id"], version_id=m["vid"])
    if q.lower().startswith("civitai:"):  # a prefix that says what it is: never searched for as a name
        raise QueryError(f"not a Civitai model id: {shown(q)} (expected civitai:ID or civitai:ID@VERSION, "
                         "with numbers)")  # fmt: skip
    if is_url:
        try:
            url = urlsplit(q if "://" in q else "https://" + q)
        except ValueError as exc:  # "http://[::1": not a URL anyone could open
            raise QueryError(f"not a readable URL: {shown(q)} ({exc})") from None
        host = url.netloc.lower().removeprefix("www.")
        parts = [p for p in url.path.split("/") if p]
        if host in CIVITAI_HOSTS:  # one site under each of its names
            params = parse_qs(url.query)
            vid = params["modelVersionId"][0] if params.get("modelVersionId") else None
            if len(parts) >= 2 and parts[0] == "models" and parts[1].isdigit():
                return Query(raw, "civitai", model_id=parts[1], version_id=vid)
            if len(parts) >= 2 and parts[0] == "model-versions" and parts[1].isdigit():
                return Query(raw, "civitai", version_id=parts[1])
            raise QueryError(f"not a Civitai model URL: {shown(q)} (expected civitai.com/models/ID)")
        if host in ("huggingface.co", "hf.co") and parts and parts[0] in ("spaces", "datasets", "collections"):
            kind = {"spaces": "a Space", "datasets": "a dataset", "collections": "a collection"}[parts[0]]
            raise QueryError(f"{shown(q)} is {kind} on the Hugging Face Hub, not a model repo")
        if host in ("huggingface.co", "hf.co") and len(parts) >= 2:
            return Query(raw, "hf", repo=f"{parts[0]}/{parts[1]}")
        raise QueryError(f"unsupported URL: {shown(q)} (Civitai and Hugging Face model pages are understood)")
    if _HEX.match(q) and len(q) in _HASH_KINDS:
        return Query(raw, "hash", hash=q.upper(), hash_kind=_HASH_KINDS[len(q)])
    if (m := _HF_REPO.match(q)) and " " not in q:
        return Query(raw, "hf", repo=m["repo"])
    if sum(ch.isalnum() for ch in normalize_name(q)) < MIN_NAME_CHARS:
        raise QueryError(f"{shown(q)!r} is too short to match a model name: give at least {MIN_NAME_CHARS} letters or "
                         "digits, a URL, a hash or a file")  # fmt: skip
    return Query(raw, "text", text=q)  # a version named at its end is found by advisor.advice.match
