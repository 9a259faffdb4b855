"""Proof of what a Hub repo holds, from its files rather than its tags (domain.md section 2).

An inpainting pipeline tag or ``_class_name`` is only a hint (the inpaint pipeline also runs a normal UNet); the
proof is the number of input channels: ``unet/config.json`` ``in_channels`` for diffusers repos, the conv_in
shape in the safetensors header (a range read of a few hundred KB) for single-file checkpoints.
"""

from dataclasses import dataclass, field

from crawler.hf.hub import FileMissing, Hub, RepoUnavailable
from crawler.http import ApiError
from data import load
from merge.layout import detect, from_diffusers_config

MIN_CHECKPOINT_BYTES = 500 * 2**20  # smaller root files are VAEs, embeddings, LoRAs: not worth a header read


def config() -> dict:
    return load("hf_crawl")


@dataclass
class Proof:
    """What one checkpoint (a diffusers folder or a single file) is, and how we know."""

    variant: str | None = None  # normal | inpaint | pix2pix | depth | fill; None: could not tell
    arch: str | None = None  # family id from shapes: sd1, sd2, sdxl, sdxl-refiner, flux1, sd3
    in_channels: int | None = None
    how: str = ""  # "unet/config.json in_channels 9", ...
    problem: str | None = None  # why there is no proof
    not_a_checkpoint: bool = False  # a VAE, an embedding, a text encoder: not recorded as a version


@dataclass
class Checkpoint:
    """A version of the repo as the registry records it: the diffusers folder, or one single-file checkpoint."""

    key: str  # "diffusers" or the file path
    files: list[str]
    proof: Proof = field(default_factory=Proof)


@dataclass
class Inspection:
    checkpoints: list[Checkpoint]
    sizes: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    unavailable: str | None = None  # gated / not found: recorded, not fatal
    errors: list[tuple[str, str]] = field(default_factory=list)  # (URL, reason) of each request that failed
    requests: int = 0


def _is_checkpoint_file(path: str) -> bool:
    suffixes = tuple(config()["checkpoint_suffixes"])
    return "/" not in path and path.lower().endswith(suffixes)


def checkpoints_of(files: list[str]) -> list[Checkpoint]:
    """The checkpoints a repo's file list holds, before any request."""
    found = []
    names = set(files)
    if "model_index.json" in names or "unet/config.json" in names or "transformer/config.json" in names:
        weights = sorted(f for f in files if f.startswith(("unet/", "transformer/")) and f.endswith(
            (".safetensors", ".bin")))  # fmt: skip
        found.append(Checkpoint("diffusers", weights))
    found += [Checkpoint(f, [f]) for f in sorted(files) if _is_checkpoint_file(f)]
    return found


def proof_from_unet_config(cfg: dict, path: str) -> Proof:
    arch, variant, channels = from_diffusers_config(cfg, transformer=path.startswith("transformer/"))
    if channels is None:
        return Proof(problem=f"{path} has no in_channels")
    return Proof(variant, arch, channels, f"{path} in_channels {channels}")


def proof_from_header(tensors: dict, path: str) -> Proof:
    layout = detect(tensors)
    if layout.family is None and layout.variant == "unknown":
        return Proof(problem=f"{path} holds no UNet or transformer", not_a_checkpoint=True)
    shown = f" ({layout.in_channels} input channels)" if layout.in_channels else ""
    return Proof(layout.variant, layout.family, layout.in_channels, f"tensor shapes in {path}{shown}")


def inspect(hub: Hub, repo: str, revision: str, files: list[str], *,
            known_blobs: tuple[dict[str, int], dict[str, str]] | None = None) -> Inspection:  # fmt: skip
    """Read the few bytes that prove each checkpoint's family and variant. Costs one request for a diffusers
    repo; for single files, one for sizes and hashes plus one header read per large checkpoint file."""
    result = Inspection(checkpoints_of(files))
    try:
        if any(c.key != "diffusers" for c in result.checkpoints):
            if known_blobs is None:
                info = hub.model_info(repo, files_metadata=True)
                result.requests += 1
                known_blobs = blobs_of(info)
            result.sizes, result.sha256 = known_blobs
        budget = config()["max_headers_per_repo"]
        for ckpt in result.checkpoints:
            if ckpt.key == "diffusers":
                path = "unet/config.json" if "unet/config.json" in files else "transformer/config.json"
                if path not in files:
                    ckpt.proof = Proof(problem="no unet/ or transformer/ config")
                    continue
                result.requests += 1
                ckpt.proof = proof_from_unet_config(hub.read_json(repo, revision, path), path)
            elif not ckpt.key.lower().endswith(".safetensors"):
                ckpt.proof = Proof(problem="a pickle checkpoint: not opened, names only")
            elif result.sizes.get(ckpt.key, MIN_CHECKPOINT_BYTES) < MIN_CHECKPOINT_BYTES:
                ckpt.proof = Proof(problem="too small to be a full checkpoint", not_a_checkpoint=True)
            elif budget <= 0:
                ckpt.proof = Proof(problem="not opened (header budget per repo spent)")
            else:
                budget -= 1
                result.requests += 1
                try:
                    ckpt.proof = proof_from_header(hub.safetensors_header(repo, revision, ckpt.key), ckpt.key)
                except (FileMissing, ApiError) as exc:
                    ckpt.proof = Proof(problem=str(exc))
                    if not (isinstance(exc, ApiError) and exc.status == 200):  # 200: read, not a valid header
                        result.errors.append(_failure(hub, repo, revision, exc))
    except RepoUnavailable as exc:
        result.unavailable = exc.reason
    except (FileMissing, ApiError) as exc:
        result.errors.append(_failure(hub, repo, revision, exc))
    result.checkpoints = [c for c in result.checkpoints if not c.proof.not_a_checkpoint]
    return result


def _failure(hub: Hub, repo: str, revision: str, exc: FileMissing | ApiError) -> tuple[str, str]:
    """(URL, reason) of a failed request, for the crawl's error list."""
    if isinstance(exc, FileMissing):
        return f"{hub.endpoint}/{repo}/resolve/{revision}/{exc.path}", "listed by the Hub, but not there (HTTP 404)"
    url = exc.url if "://" in exc.url else f"{hub.endpoint}/{exc.url}"
    return url, f"HTTP {exc.status}: {exc.detail}" if exc.status != 200 else exc.detail


def git_oids(info) -> dict[str, str]:
    """Git blob ids of the files not in LFS (a diffusers folder's JSON configs): their only checksum on the Hub."""
    return {s.rfilename: s.blob_id for s in info.siblings or [] if s.lfs is None and getattr(s, "blob_id", None)}


def blobs_of(info) -> tuple[dict[str, int], dict[str, str]]:
    """(sizes, sha256) per file from a ``ModelInfo`` fetched with ``files_metadata=True``."""
    sizes, hashes = {}, {}
    for s in info.siblings or []:
        if s.size is not None:
            sizes[s.rfilename] = s.size
        lfs = s.lfs
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        if sha:
            hashes[s.rfilename] = sha.upper()
    return sizes, hashes
