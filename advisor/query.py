"""What did the user paste? A Civitai URL, id or AIR URN, a Hugging Face repo, a hash, a local file, or text."""

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_HASH_KINDS = {8: "autov1", 10: "autov2", 12: "autov3", 64: "sha256"}
_AIR = re.compile(r"^urn:air:(?P<eco>[\w.-]+):(?P<type>[\w.-]+):civitai:(?P<id>\d+)(?:@(?P<vid>\d+))?$", re.I)
_CIVITAI_ID = re.compile(r"^civitai:(?P<id>\d+)(?:@(?P<vid>\d+))?$", re.I)
_HF_REPO = re.compile(r"^(?:hf:)?(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)$")
# "majicmix realistic v7", "dreamshaper 8", "realcartoon3d v1.2.1-inp": a trailing version label
_VERSION_TAIL = re.compile(r"^(?P<name>.*?\S)\s+(?P<version>v?\d+(?:\.\d+)*[a-z]?(?:[-_ ]?\w+)?)$", re.I)


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
    version_hint: str | None = None


def parse_query(raw: str) -> Query:
    q = raw.strip()
    if not q:
        raise ValueError("empty query: give a model name, a Civitai or Hugging Face URL, a hash or a file")
    path = Path(q).expanduser()
    if (q.startswith((".", "/", "~")) or path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin")) and (
        path.exists()
    ):
        return Query(raw, "file", path=path)
    if path.exists() and (path.is_file() or (path / "model_index.json").exists() or (path / "unet").is_dir()):
        return Query(raw, "file", path=path)
    if m := _AIR.match(q):
        return Query(raw, "civitai", model_id=m["id"], version_id=m["vid"])
    if m := _CIVITAI_ID.match(q):
        return Query(raw, "civitai", model_id=m["id"], version_id=m["vid"])
    if "://" in q or q.startswith(("civitai.com/", "www.civitai.com/", "huggingface.co/", "hf.co/")):
        url = urlsplit(q if "://" in q else "https://" + q)
        host = url.netloc.lower().removeprefix("www.")
        parts = [p for p in url.path.split("/") if p]
        if host.endswith("civitai.com"):
            params = parse_qs(url.query)
            vid = (params.get("modelVersionId") or [None])[0]
            if len(parts) >= 2 and parts[0] == "models" and parts[1].isdigit():
                return Query(raw, "civitai", model_id=parts[1], version_id=vid)
            if len(parts) >= 2 and parts[0] == "model-versions" and parts[1].isdigit():
                return Query(raw, "civitai", version_id=parts[1])
            raise ValueError(f"not a Civitai model URL: {q} (expected civitai.com/models/ID)")
        if host in ("huggingface.co", "hf.co") and len(parts) >= 2:
            return Query(raw, "hf", repo=f"{parts[0]}/{parts[1]}")
        raise ValueError(f"unsupported URL: {q}")
    if _HEX.match(q) and len(q) in _HASH_KINDS:
        return Query(raw, "hash", hash=q.upper(), hash_kind=_HASH_KINDS[len(q)])
    if (m := _HF_REPO.match(q)) and " " not in q:
        return Query(raw, "hf", repo=m["repo"])
    text, version = q, None
    if m := _VERSION_TAIL.match(q):
        text, version = m["name"], m["version"]
    return Query(raw, "text", text=text, version_hint=version)
