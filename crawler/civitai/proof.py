"""Proof from the file where a Civitai version's metadata cannot tell (domain.md section 2): the tensors of its
primary file, as Civitai lists them (its tensor-metadata endpoint, June 2026: no download), else its
safetensors header read with range requests through the download URL (Civitai redirects to signed storage that
honours ranges; the token goes to Civitai only), decide by the UNet's input channels, as the Hub crawl does.
Bounded: only ambiguous versions (``crawler.detect.ambiguity``), a few hundred KB each, each file once (proofs
are kept by its SHA256, whatever model or host it is under). Only what was read is recorded: a file not read
(401/403 without an API key, 429, 5xx, a dropped connection) stays "not read yet", asked again by the next
crawl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

from crawler import detect, families, links, registry
from crawler.civitai.ids import file_number
from crawler.http import CrawlError, credentials_allowed, new_client, open_redirected
from data import base_models
from data.settings import Sites
from merge.header import ITEMSIZE, CheckpointError, TensorInfo, header_length, parse_header_json
from merge.layout import detect as layout_of

if TYPE_CHECKING:
    from crawler.registry import ParsedModel, Registry

FIRST_READ = 512 * 1024  # an SD 1.5/SDXL/FLUX header is 60-250 KB: usually one request
MAX_HEADER = 16 * 2**20  # more is not a checkpoint header worth reading
BUDGET = 200  # header reads per crawl; the rest wait for the next one (the most downloaded models first)
MAX_ATTEMPTS = 4  # times the budget: files not read (401, 5xx) cost a request each, not a header's worth
GIVE_UP_AFTER = 5  # transient failures in a row (5xx, dropped connections): the storage is in trouble
PENDING_BATCH = 2000
TOKEN_ENV = "CIVITAI_API_TOKEN"  # as crawler.civitai.TOKEN_ENV (which imports this module): named, never read here


@dataclass
class ProofSummary:
    read: int = 0  # files whose proof is recorded (read, the unreadable ones included, or gone), each once
    proven: int = 0
    unreadable: int = 0  # read, and not a checkpoint or malformed, or gone (404, 410): recorded, not asked again
    changed: int = 0  # versions whose verdict the proof reversed
    deferred: int = 0  # not read (401/403, 429, 5xx, a dropped connection): nothing recorded, asked again later
    # (download URL, reason) of each file not read
    failures: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None  # why the reads stopped early (a 429, a storage in trouble)


class Unreadable(Exception):
    """The file was read, and its header is not a checkpoint's (or is malformed): the metadata verdict stands."""


class Gone(Exception):
    """The download answers 404 or 410, or 401 because its creator disabled downloads: there is no file to read,
    and asking again will not bring it. Recorded like an unreadable file (the metadata verdict stands), and named
    among the crawl's errors."""


class NotRead(Exception):
    """The file could not be read now (an HTTP error, a dropped connection, a redirect that leads nowhere):
    nothing is recorded, and the next crawl asks again. ``transient``: the server's trouble (429, 5xx, the
    connection), not this file's (401, 403)."""

    def __init__(self, reason: str, *, status: int | None = None, transient: bool = False):
        super().__init__(reason)
        self.status, self.transient = status, transient


def _read(client: httpx.Client, url: str, token: str | None, start: int, end: int) -> tuple[bytes, str]:
    """Bytes ``start``..``end`` (inclusive) and the URL that served them (the signed storage URL, reused for a
    second read without the token); a server that ignores the range is read only as far as needed."""
    try:
        response = open_redirected(client, url, {"Range": f"bytes={start}-{end}"}, token)
    except httpx.HTTPError as exc:
        raise NotRead(f"{type(exc).__name__}: the connection failed", transient=True) from None
    except CrawlError as exc:  # a redirect to a login page, nowhere, or somewhere refused
        raise NotRead(str(exc)) from None
    try:
        status = response.status_code
        if status in (404, 410):
            raise Gone(f"HTTP {status}: the download is gone")
        if status == 401 and _downloads_disabled(_small_body(response)):
            raise Gone("HTTP 401: the creator has disabled downloads of this file")  # no key will read it
        if status not in (200, 206):
            raise NotRead(_http_reason(status, token), status=status, transient=status == 429 or status >= 500)
        if "json" in response.headers.get("content-type", "") or "html" in response.headers.get("content-type", ""):
            raise Unreadable("the download answered with a page, not the file")
        want, got = end - start + 1, bytearray()
        skip = start if response.status_code == 200 else 0  # the range was ignored: the whole file comes
        try:
            for chunk in response.iter_bytes():
                got += chunk
                if len(got) >= skip + want:
                    break
        except httpx.HTTPError as exc:  # dropped mid-body: what came is not the file's header
            raise NotRead(f"{type(exc).__name__}: the connection dropped while reading", transient=True) from None
        return bytes(got[skip : skip + want]), str(response.url)
    finally:
        response.close()


def _small_body(response: httpx.Response, limit: int = 4096) -> str:
    """The start of an error answer's body (a stranger's server may send any amount)."""
    got = bytearray()
    try:
        for chunk in response.iter_bytes():
            got += chunk
            if len(got) >= limit:
                break
    except httpx.HTTPError:
        pass
    return got[:limit].decode("utf-8", "replace")


def _downloads_disabled(body: str) -> bool:
    """Civitai's words for a file whose creator disabled downloads (not a key or an account that is disabled)."""
    text = body.lower()
    return "disabled downloads" in text or "downloads are disabled" in text


def _http_reason(status: int, token: str | None) -> str:
    if status in (401, 403) and not token:
        return f"HTTP {status}: the file needs a Civitai API key (set {TOKEN_ENV})"
    if status in (401, 403):
        return f"HTTP {status}: not downloadable with this API key"
    if status == 429:
        return "HTTP 429: too many requests"
    return f"HTTP {status}"


def read_remote_header(client: httpx.Client, url: str, token: str | None) -> dict:
    """The tensors (merge.header.TensorInfo) of the safetensors file behind ``url``."""
    head, served_by = _read(client, url, token, 0, FIRST_READ - 1)
    if len(head) < 8:
        raise Unreadable("shorter than a safetensors header")
    n = header_length(head)
    if n is None or n > MAX_HEADER:  # a tighter cap than a local file's: this is read over the network
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


MAX_LISTED_TENSORS = 200_000  # more is not a checkpoint's header (SDXL has about 2,500 tensors)


def listed_tensors(client: httpx.Client, base_url: str, file_id: str, token: str | None) -> dict | None:
    """The tensors Civitai parsed from the file's header (``GET /api/v1/model-files/{id}/tensor-metadata``,
    June 2026; gated like the download): no download and no Range read. None when it cannot answer (an older
    Civitai, a mirror without it, a format it does not parse, a failure on its side): the Range read then asks
    the file itself. Gone when its creator disabled downloads."""
    url = f"{base_url}/api/v1/model-files/{quote(file_id, safe='')}/tensor-metadata"
    # the token under the policy of every other request: to Civitai itself, over https or to a loopback mirror
    headers = {"Authorization": f"Bearer {token}"} if token and credentials_allowed(base_url, url) else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 403 and _downloads_disabled(_small_body(response)):
                raise Gone("HTTP 403: the creator has disabled downloads of this file")
            if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
                return None
            body = _small_body(response, MAX_HEADER)
    except httpx.HTTPError:
        return None
    try:
        listed = json.loads(body).get("tensors")
    except (ValueError, AttributeError, RecursionError):  # a stranger's JSON nested past the parser's depth
        return None
    if not isinstance(listed, list) or not listed or len(listed) > MAX_LISTED_TENSORS:
        return None
    tensors = {}
    for t in listed:
        name, shape, dtype = (t.get("name"), t.get("shape"), t.get("dtype")) if isinstance(t, dict) else (None,) * 3
        if not (isinstance(name, str) and isinstance(dtype, str) and dtype.upper() in ITEMSIZE
                and isinstance(shape, list) and len(shape) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)):
            return None  # one malformed entry and the list is not trusted: the file itself is read instead
        tensors[name] = TensorInfo(dtype.upper(), tuple(shape))
    return tensors


def prove(client: httpx.Client, url: str, token: str | None, listed: dict | None = None) -> dict:
    """A headerproof row (without its key) for the file behind ``url``, from ``listed`` (the tensors Civitai
    parsed, when it had them) or from its header as read. NotRead when the file could not be read now (401/403,
    429, 5xx, a dropped connection): nothing is to be recorded, and the next crawl (with a token, or later) asks
    again; Gone when there is no file (404, 410)."""
    try:
        tensors = listed if listed is not None else read_remote_header(client, url, token)
    except Unreadable as exc:
        return {"variant": None, "problem": str(exc), "how": ""}
    layout = layout_of(tensors)
    if layout.variant == "unknown" and listed is not None:  # a list that says too little: the file itself says
        return prove(client, url, token)
    if layout.variant == "unknown":
        return {"variant": None, "problem": "no UNet or transformer in its header", "how": ""}
    how = f"{layout.in_channels} input channels in its header" if layout.in_channels else "its header's tensors"
    how += " (as Civitai lists its tensors)" if listed is not None else ""
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
    return (ambiguous is not None or _family_unknown(row) or bool(_contradicted(row))) and safetensors


def _contradicted(row: dict) -> list[str]:
    """Family words of its names that its base model's family contradicts ("XL" in a version said to be SD
    1.5): its file's tensors are to tell which is right."""
    return families.contradicting_words(row.get("family"), [row["name"], row["file_name"], row["model_name"]])


def _family_unknown(row: dict) -> bool:
    """No family from its base model ("Other", or one the data does not know), and not a video, audio or API
    base model either: its file's tensors are to tell it."""
    base = row.get("base_model")
    return row.get("family") is None and base_models.is_image(base) and base_models.api_only(base) is None


def _family_from(row: dict, proof: dict) -> str | None:
    """The family the file's tensors tell, where the version's base model gave none or another architecture."""
    arch = proof.get("arch")
    told = families.family(arch)
    if arch is None or told is None:
        return None
    if families.agrees_with_tensors(row.get("family"), arch):
        return None  # Pony's file has SDXL's shapes: the base model names the lineage, the shapes agree
    return arch


def _told_why(row: dict, family: str) -> str:
    """The evidence line of a family the tensors told, against what the base model said."""
    told = (families.family(family) or {}).get("name", family)
    said = row.get("base_model") or "no base model"
    return f"its file's tensors are {told}'s (its base model says {said})"


def wanted_versions(reg: Registry, most: int) -> list[dict]:
    """Up to ``most`` versions whose file a proof should read (``_wants_proof``), the most downloaded first: the
    registry's SQL pre-filter pages through the candidates, and the exact rules pick among them."""
    wanted: list[dict] = []
    offset = 0
    with reg.snapshot() as tx:
        # versions that merely mention inpainting and agree with themselves are never proven, so they stay in
        # the SQL filter's answer: page past them to the ambiguous ones (enough for the budget's reads, and
        # for the files that may not be read now)
        contradictions = families.contradiction_patterns()
        while len(wanted) < most and (batch := tx.pending_proofs(PENDING_BATCH, offset, contradictions)):
            offset += len(batch)
            wanted += [row for row in batch if _wants_proof(row)]
    return wanted


def prove_pending(reg: Registry, base_url: str, token: str | None, *, budget: int = BUDGET,
                  timeout: float = 30.0) -> ProofSummary:  # fmt: skip
    """Read the headers of the ambiguous versions not proven yet (at most ``budget`` files), record the proofs
    and rewrite those versions' verdicts, their models' flags and same-model links. A file that could not be
    read (NotRead) is recorded nowhere: it is asked again by the next crawl."""
    summary = ProofSummary()
    wanted = wanted_versions(reg, budget * MAX_ATTEMPTS)
    found: dict[str, dict] = {}
    not_read: set[str] = set()
    verdicts: dict[str, tuple[bool, float, list[str]]] = {}
    told: dict[str, str] = {}  # version -> the family its tensors say
    in_a_row = 0
    with new_client(timeout=timeout) as client:
        for row in wanted:
            key = registry.proof_key(row["sha256"], row["file_id"])
            if key in not_read:
                continue
            if key not in found:
                if summary.read >= budget or summary.read + summary.deferred >= budget * MAX_ATTEMPTS:
                    continue  # spent: only versions sharing a file read already are still decided
                number = file_number(row["file_id"])
                url = Sites(civitai_url=base_url).civitai_download(row["source_id"], number)
                try:
                    listed = listed_tensors(client, base_url, number, token) if number else None
                    proof = prove(client, url, token, listed)
                except Gone as exc:
                    proof = {"variant": None, "problem": str(exc), "how": ""}
                    summary.failures.append((url, f"{exc}; recorded, not asked again"))
                except NotRead as exc:
                    summary.deferred += 1
                    not_read.add(key)
                    in_a_row = in_a_row + 1 if exc.transient else 0
                    if exc.status == 429 or in_a_row >= GIVE_UP_AFTER:
                        summary.stopped = "asked to slow down" if exc.status == 429 else \
                            f"{in_a_row} failures in a row"  # fmt: skip
                        summary.failures.append((url, f"{exc}; header reads stopped here ({summary.stopped}): "
                                                      "this file and the rest wait for the next crawl"))  # fmt: skip
                        break
                    summary.failures.append((url, f"{exc}; not read, asked again by the next crawl"))
                    continue
                in_a_row = 0
                summary.read += 1
                summary.proven += proof["variant"] is not None
                summary.unreadable += proof["variant"] is None
                found[key] = {"key": key, **proof}
            proof = found[key]
            verdict = _verdict(row, proof)
            if (family := _family_from(row, proof)) is not None:
                told[row["id"]] = family
                verdict = (*verdict[:2], [*verdict[2], _told_why(row, family)])
            verdicts[row["id"]] = verdict
            summary.changed += verdict[0] != bool(row["is_inpainting"])
    with reg.transaction() as tx:
        tx.save_proofs(list(found.values()))
        tx.set_proven_families(told)
        for model_id in tx.set_verdicts(verdicts):
            versions = tx.versions_for_links(model_id)
            tx.refresh_model(model_id, versions, links.within_model({"id": model_id}, versions))
    return summary


def apply_known(reg: Registry, parsed: dict[str, ParsedModel]) -> None:
    """Before a page is stored: versions whose primary file was proven already get that proof's verdict again
    (a re-crawled model is re-parsed from its metadata)."""
    keyed = {}
    for p in parsed.values():
        primary = {f["version_id"]: f for f in p.files if f["primary"]}
        for v in p.versions:
            f = primary.get(v["id"])
            if f is not None:
                keyed[v["id"]] = registry.proof_key(f["sha256"], f["id"])
    if not keyed:
        return
    with reg.snapshot() as tx:
        known = tx.known_proofs(sorted(set(keyed.values())))
    if not known:
        return
    for p in parsed.values():
        touched = False
        for v in p.versions:
            proof = known.get(keyed.get(v["id"], ""))
            if proof is None:
                continue
            is_inp, conf, evidence = _verdict(v, proof)
            if (family := _family_from(v, proof)) is not None:  # what the tensors told, not the base model again
                evidence.append(_told_why(v, family))
                v["family"] = family
                if p.model.get("family") is None or all(o["family"] == family for o in p.versions):
                    p.model["family"] = family
            touched |= is_inp != v["is_inpainting"]
            v.update(is_inpainting=is_inp, inpaint_confidence=conf, inpaint_evidence=json.dumps(evidence))
        if touched:
            p.inpaint_versions.clear()
            p.inpaint_versions.update(v["id"] for v in p.versions if v["is_inpainting"])
            p.model["is_inpainting"] = bool(p.versions) and all(v["is_inpainting"] for v in p.versions)
            p.model["has_inpainting"] = any(v["is_inpainting"] for v in p.versions)
            p.links[:] = links.within_model(p.model, p.versions)
