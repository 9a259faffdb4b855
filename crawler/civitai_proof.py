"""Proof from the file where a Civitai version's metadata cannot tell (domain.md section 2): the safetensors
header of its primary file, read with range requests through the download URL (Civitai redirects to signed
storage that honours ranges; the token goes to Civitai only), decides by the UNet's input channels, as the Hub
crawl does. Bounded: only ambiguous versions (``crawler.detect.ambiguity``), a few hundred KB each, each file
once (proofs are kept by its SHA256, whatever model or host it is under).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from crawler import detect, links
from crawler.http import CrawlError, open_redirected, user_agent
from crawler.registry import proofs
from merge.header import CheckpointError, parse_header_json
from merge.layout import detect as layout_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from crawler.registry.pages import ParsedModel

FIRST_READ = 512 * 1024  # an SD 1.5/SDXL/FLUX header is 60-250 KB: usually one request
MAX_HEADER = 16 * 2**20  # more is not a checkpoint header worth reading
BUDGET = 200  # header reads per crawl; the rest wait for the next one (the most downloaded models first)
PENDING_BATCH = 2000


@dataclass
class ProofSummary:
    read: int = 0
    proven: int = 0
    unreadable: int = 0
    changed: int = 0  # versions whose verdict the proof reversed
    deferred: int = 0  # could not be asked now (connection, 429, 5xx): asked again by the next crawl


class Unreadable(Exception):
    """The file's header could not be read or is not a checkpoint's: the metadata verdict stands."""


def _read(client: httpx.Client, url: str, token: str | None, start: int, end: int) -> tuple[bytes, str]:
    """Bytes ``start``..``end`` (inclusive) and the URL that served them (the signed storage URL, reused for a
    second read without the token); a server that ignores the range is read only as far as needed."""
    response = open_redirected(client, url, {"Range": f"bytes={start}-{end}"}, token)
    try:
        if response.status_code not in (200, 206):
            raise Unreadable(f"HTTP {response.status_code}")
        if "json" in response.headers.get("content-type", "") or "html" in response.headers.get("content-type", ""):
            raise Unreadable("the download answered with a page, not the file")
        want, got = end - start + 1, bytearray()
        skip = start if response.status_code == 200 else 0  # the range was ignored: the whole file comes
        for chunk in response.iter_bytes():
            got += chunk
            if len(got) >= skip + want:
                break
        return bytes(got[skip : skip + want]), str(response.url)
    finally:
        response.close()


def read_remote_header(client: httpx.Client, url: str, token: str | None) -> dict:
    """The tensors (merge.header.TensorInfo) of the safetensors file behind ``url``."""
    head, served_by = _read(client, url, token, 0, FIRST_READ - 1)
    if len(head) < 8:
        raise Unreadable("shorter than a safetensors header")
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > MAX_HEADER:
        raise Unreadable("not a safetensors file")
    raw = head[8 : 8 + n]
    if len(raw) < n:
        more, _ = _read(client, served_by, None, 8 + len(raw), 8 + n - 1)
        raw += more
    if len(raw) < n:
        raise Unreadable("the file ends inside its header")
    try:
        tensors, _ = parse_header_json(raw, "the file", 8 + n)
    except CheckpointError as exc:
        raise Unreadable(str(exc).removeprefix("the file: ")[:120]) from None
    return tensors


TRANSIENT = (429, 500, 502, 503, 504)


def prove(client: httpx.Client, url: str, token: str | None) -> dict | None:
    """A headerproof row (without its key) for the file behind ``url``; None when it could not be asked now (a
    dropped connection, a 429 or 5xx): nothing is recorded, the next crawl asks again."""
    try:
        tensors = read_remote_header(client, url, token)
    except Unreadable as exc:
        if any(str(exc) == f"HTTP {code}" for code in TRANSIENT):
            return None
        return {"variant": None, "problem": str(exc), "how": ""}
    except (httpx.HTTPError, CrawlError):
        return None
    layout = layout_of(tensors)
    if layout.variant == "unknown":
        return {"variant": None, "problem": "no UNet or transformer in its header", "how": ""}
    how = f"{layout.in_channels} input channels in its header" if layout.in_channels else "its header's tensors"
    return {"variant": layout.variant, "arch": layout.family, "in_channels": layout.in_channels, "how": how}


def _verdict(version: dict, proof: dict) -> tuple[bool, float, list[str]]:
    evidence = version["inpaint_evidence"]
    evidence = json.loads(evidence) if isinstance(evidence, str) else list(evidence or [])
    return detect.with_proof(bool(version["is_inpainting"]), version["inpaint_confidence"], evidence,
                             proof.get("variant"), proof.get("how") or "", proof.get("problem"))  # fmt: skip


def _wants_proof(row: dict) -> bool:
    ambiguous = detect.ambiguity(version_name=row["name"], base_model_type=row["base_model_type"],
                                 file_names=[row["file_name"]], model_name=row["model_name"],
                                 model_tags=json.loads(row["tags"] or "[]"))  # fmt: skip
    safetensors = row["format"] in (None, "SafeTensor") and row["file_name"].lower().endswith(".safetensors")
    return ambiguous is not None and safetensors


def prove_pending(engine: Engine, base_url: str, token: str | None, *, budget: int = BUDGET,
                  timeout: float = 30.0) -> ProofSummary:  # fmt: skip
    """Read the headers of the ambiguous versions not proven yet (at most ``budget``), record the proofs and
    rewrite those versions' verdicts, their models' flags and same-model links."""
    summary = ProofSummary()
    wanted: list[dict] = []
    offset = 0
    with engine.connect() as conn:
        # versions that merely mention inpainting and agree with themselves are never proven, so they stay in
        # the SQL filter's answer: page past them to the ambiguous ones
        while len(wanted) < budget and (batch := proofs.pending(conn, PENDING_BATCH, offset)):
            offset += len(batch)
            wanted += [row for row in batch if _wants_proof(row)]
    wanted = wanted[:budget]
    found: dict[str, dict] = {}
    verdicts: dict[str, tuple[bool, float, list[str]]] = {}
    with httpx.Client(timeout=timeout, headers={"User-Agent": user_agent()}) as client:
        for row in wanted:
            key = proofs.key_of(row["sha256"], row["file_id"])
            if key not in found:
                proof = prove(client, f"{base_url}/api/download/models/{row['source_id']}", token)
                summary.read += 1
                if proof is None:
                    summary.deferred += 1
                    continue
                found[key] = {"key": key, **proof}
            proof = found[key]
            verdict = _verdict(row, proof)
            verdicts[row["id"]] = verdict
            summary.proven += proof["variant"] is not None
            summary.unreadable += proof["variant"] is None
            summary.changed += verdict[0] != bool(row["is_inpainting"])
    with engine.begin() as conn:
        proofs.save(conn, list(found.values()))
        for model_id in proofs.set_verdicts(conn, verdicts):
            versions = proofs.versions_for_links(conn, model_id)
            proofs.refresh_model(conn, model_id, versions, links.within_model({"id": model_id}, versions))
    return summary


def apply_known(engine: Engine, parsed: dict[str, ParsedModel]) -> None:
    """Before a page is stored: versions whose primary file was proven already get that proof's verdict again
    (a re-crawled model is re-parsed from its metadata)."""
    keyed = {}
    for p in parsed.values():
        primary = {f["version_id"]: f for f in p.files if f["primary"]}
        for v in p.versions:
            f = primary.get(v["id"])
            if f is not None:
                keyed[v["id"]] = proofs.key_of(f["sha256"], f["id"])
    if not keyed:
        return
    with engine.connect() as conn:
        known = proofs.known(conn, sorted(set(keyed.values())))
    if not known:
        return
    for p in parsed.values():
        touched = False
        for v in p.versions:
            proof = known.get(keyed.get(v["id"], ""))
            if proof is None:
                continue
            is_inp, conf, evidence = _verdict(v, proof)
            touched |= is_inp != v["is_inpainting"]
            v.update(is_inpainting=is_inp, inpaint_confidence=conf, inpaint_evidence=json.dumps(evidence))
        if touched:
            p.inpaint_versions.clear()
            p.inpaint_versions.update(v["id"] for v in p.versions if v["is_inpainting"])
            p.model["is_inpainting"] = bool(p.versions) and all(v["is_inpainting"] for v in p.versions)
            p.model["has_inpainting"] = any(v["is_inpainting"] for v in p.versions)
            p.links[:] = links.within_model(p.model, p.versions)
