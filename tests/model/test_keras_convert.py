"""Conversion of Keras ResNet50 weights (TF.js layers model) to torchvision: math and name mapping.

The Keras side is computed here independently, in NHWC with explicit padding, so the tests check the
conversion against Keras semantics rather than against its own formulas.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from covidct.errors import WeightsError
from covidct.model.keras_convert import (
    CAFFE_MEAN_BGR,
    KERAS_EXACT_MEAN_RGB,
    conv_bn_to_torch,
    convert_keras_resnet50,
    keras_conv_bn_pairs,
)
from covidct.model.network import StrideVariant, build_resnet50
from covidct.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD

KERAS_EPS = 1e-3


def keras_conv2d(
    x_nhwc: np.ndarray, kernel_hwio: np.ndarray, bias: np.ndarray, *, stride: int, pad: int
) -> np.ndarray:
    """Keras Conv2D after ZeroPadding2D(pad): (N, H, W, I) -> (N, Ho, Wo, O), float64."""
    x = np.pad(x_nhwc.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k_h, k_w = kernel_hwio.shape[:2]
    out_h, out_w = (x.shape[1] - k_h) // stride + 1, (x.shape[2] - k_w) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel_hwio.shape[3]))
    for i in range(k_h):
        for j in range(k_w):
            patch = x[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
            out += patch @ kernel_hwio[i, j].astype(np.float64)
    return out + bias


def keras_batchnorm(x: np.ndarray, bn: dict[str, np.ndarray]) -> np.ndarray:
    """Keras BatchNormalization in inference mode (epsilon 1e-3)."""
    return bn["gamma"] * (x - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + KERAS_EPS) + bn["beta"]


def random_bn(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """BN arrays with small variances, so a wrong epsilon changes the output visibly."""
    return {
        "gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        "beta": rng.normal(0, 0.5, channels).astype(np.float32),
        "moving_mean": rng.normal(0, 1, channels).astype(np.float32),
        "moving_variance": rng.uniform(1e-3, 1e-2, channels).astype(np.float32),
    }


def torch_conv_bn(converted: dict[str, np.ndarray], *, stride: int, pad: int) -> nn.Sequential:
    """A torchvision-style conv (no bias) + BatchNorm2d (eps 1e-5) holding converted tensors."""
    out_c, in_c, k, _ = converted["conv.weight"].shape
    block = nn.Sequential(
        nn.Conv2d(in_c, out_c, k, stride=stride, padding=pad, bias=False), nn.BatchNorm2d(out_c)
    )
    block[0].weight.data = torch.from_numpy(converted["conv.weight"])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(block[1], name).data = torch.from_numpy(converted[f"bn.{name}"])
    return block.eval()


def run_nhwc(block: nn.Module, x_nchw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return block(torch.from_numpy(x_nchw.astype(np.float32))).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    ("kernel", "stride", "pad"), [(1, 1, 0), (1, 2, 0), (3, 1, 1)], ids=["1x1", "1x1-stride2", "3x3-same"]
)
def test_conv_bn_matches_keras(kernel: int, stride: int, pad: int) -> None:
    rng = np.random.default_rng(0)
    kernel_hwio = rng.normal(0, 0.3, (kernel, kernel, 4, 5)).astype(np.float32)
    bias = rng.normal(0, 2, 5).astype(np.float32)
    bn = random_bn(rng, 5)
    x_nhwc = rng.normal(0, 1, (2, 9, 9, 4)).astype(np.float32)

    expected = keras_batchnorm(keras_conv2d(x_nhwc, kernel_hwio, bias, stride=stride, pad=pad), bn)
    converted = conv_bn_to_torch(kernel_hwio, bias, bn, eps_keras=KERAS_EPS)
    found = run_nhwc(torch_conv_bn(converted, stride=stride, pad=pad), x_nhwc.transpose(0, 3, 1, 2))

    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


def caffe_input(x_rgb01: np.ndarray) -> np.ndarray:
    """Keras "caffe" preprocessing of (N, 3, H, W) RGB in [0, 1]: (N, H, W, 3) BGR 0..255 minus the mean."""
    return (x_rgb01[:, ::-1].transpose(0, 2, 3, 1) * 255.0) - np.asarray(CAFFE_MEAN_BGR)


@pytest.mark.parametrize(
    ("mean_rgb", "is_border_exact"),
    [(IMAGENET_MEAN, False), (KERAS_EXACT_MEAN_RGB, True)],
    ids=["torchvision-mean", "keras-exact-mean"],
)
def test_stem_folds_caffe_input(mean_rgb: tuple[float, float, float], is_border_exact: bool) -> None:
    rng = np.random.default_rng(1)
    kernel_hwio = rng.normal(0, 0.05, (7, 7, 3, 8)).astype(np.float32)
    bias = rng.normal(0, 1, 8).astype(np.float32)
    bn = random_bn(rng, 8)
    x_rgb01 = rng.uniform(0, 1, (2, 3, 20, 20))

    expected = keras_batchnorm(keras_conv2d(caffe_input(x_rgb01), kernel_hwio, bias, stride=2, pad=3), bn)
    converted = conv_bn_to_torch(
        kernel_hwio, bias, bn, eps_keras=KERAS_EPS, input_stats=(mean_rgb, IMAGENET_STD)
    )
    mean, std = np.asarray(mean_rgb)[None, :, None, None], np.asarray(IMAGENET_STD)[None, :, None, None]
    found = run_nhwc(torch_conv_bn(converted, stride=2, pad=3), (x_rgb01 - mean) / std)

    # Outputs 2..8 of 10 read no padding: there the fold is exact for any mean.
    interior = (slice(None), slice(2, 9), slice(2, 9))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(found[interior], expected[interior], rtol=1e-4, atol=1e-4 * scale)
    border_error = np.abs(found - expected).max() / scale
    assert (border_error < 1e-4) == is_border_exact


@pytest.fixture(scope="module")
def torch_state() -> dict[str, np.ndarray]:
    """A random torchvision ResNet-50 state dict as float32 arrays (BN buffers with small variances)."""
    rng = np.random.default_rng(2)
    with torch.device("meta"):
        reference = resnet50().state_dict()
    state = {}
    for key, ref in reference.items():
        if key.endswith("num_batches_tracked"):
            continue
        low, high = (1e-3, 1e-2) if key.endswith("running_var") else (-1, 1)
        state[key] = rng.uniform(low, high, tuple(ref.shape)).astype(np.float32)
    return state


def keras_from_torch(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse mapping: Keras-named, Keras-shaped weights whose conversion must give ``state`` back.

    The stem's caffe fold is checked against Keras semantics in ``test_stem_folds_caffe_input``;
    here conv1 is only transposed, so conv1/bn1 are left out of the round trip.
    """
    rng = np.random.default_rng(3)
    weights: dict[str, np.ndarray] = {}
    for keras_conv, keras_bn, torch_conv, torch_bn in keras_conv_bn_pairs():
        bias = rng.normal(0, 1, state[f"{torch_bn}.bias"].shape).astype(np.float32)
        weights[f"{keras_conv}/kernel"] = state[f"{torch_conv}.weight"].transpose(2, 3, 1, 0)
        weights[f"{keras_conv}/bias"] = bias
        weights[f"{keras_bn}/gamma"] = state[f"{torch_bn}.weight"]
        weights[f"{keras_bn}/beta"] = state[f"{torch_bn}.bias"]
        weights[f"{keras_bn}/moving_mean"] = state[f"{torch_bn}.running_mean"] + bias
        weights[f"{keras_bn}/moving_variance"] = state[f"{torch_bn}.running_var"] - np.float32(
            KERAS_EPS - 1e-5
        )
    weights["fc1000/kernel"] = state["fc.weight"].T
    weights["fc1000/bias"] = state["fc.bias"]
    return weights


_V1_STRIDED = {f"res{stage}a_branch{branch}" for stage in (3, 4, 5) for branch in ("2a", "1")}


def fake_model_json(weights: dict[str, np.ndarray], *, downsample_stride: int = 2) -> dict:
    """A TF.js layers-model dict with the topology facts the converter reads and one weight group."""
    layers = [
        {"class_name": "ZeroPadding2D", "config": {"name": "conv1_pad", "padding": [[3, 3], [3, 3]]}},
        {"class_name": "Conv2D", "config": {"name": "conv1", "strides": [2, 2]}},
        {"class_name": "BatchNormalization", "config": {"name": "bn_conv1", "epsilon": KERAS_EPS}},
    ]
    for keras_conv, keras_bn, _, _ in keras_conv_bn_pairs()[1:]:
        strides = [downsample_stride] * 2 if keras_conv in _V1_STRIDED else [1, 1]
        layers.append({"class_name": "Conv2D", "config": {"name": keras_conv, "strides": strides}})
        layers.append(
            {"class_name": "BatchNormalization", "config": {"name": keras_bn, "epsilon": KERAS_EPS}}
        )
    entries = [
        {"name": name, "shape": list(array.shape), "dtype": "float32"} for name, array in weights.items()
    ]
    return {
        "format": "layers-model",
        "modelTopology": {"model_config": {"class_name": "Model", "config": {"layers": layers}}},
        "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": entries}],
    }


def weight_bytes(weights: dict[str, np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(array, dtype="<f4").tobytes() for array in weights.values())


def test_round_trip_maps_every_layer(torch_state: dict[str, np.ndarray]) -> None:
    weights = keras_from_torch(torch_state)
    converted = convert_keras_resnet50(fake_model_json(weights), weight_bytes(weights))

    with torch.device("meta"):
        assert set(converted) == set(resnet50().state_dict())
    for key, expected in torch_state.items():
        if key.startswith(("conv1.", "bn1.")):
            continue
        np.testing.assert_allclose(converted[key].numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=key)
    model = build_resnet50(num_classes=1000, stride_variant=StrideVariant.V1)
    model.load_state_dict(converted, strict=True)


def test_conv_bn_pairs_cover_resnet50() -> None:
    pairs = keras_conv_bn_pairs()
    assert len(pairs) == 53
    assert ("res3a_branch1", "bn3a_branch1", "layer2.0.downsample.0", "layer2.0.downsample.1") in pairs
    assert ("res5c_branch2c", "bn5c_branch2c", "layer4.2.conv3", "layer4.2.bn3") in pairs


@pytest.fixture(scope="module")
def keras_weights(torch_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return keras_from_torch(torch_state)


def without(weights: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {key: value for key, value in weights.items() if key != name}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda w: (
                fake_model_json(without(w, "res4b_branch2b/bias")),
                weight_bytes(without(w, "res4b_branch2b/bias")),
            ),
            r"model.json has no weight 'res4b_branch2b/bias'",
        ),
        (
            lambda w: (
                fake_model_json({**w, "extra/kernel": np.zeros(3, np.float32)}),
                weight_bytes({**w, "extra/kernel": np.zeros(3, np.float32)}),
            ),
            r"1 weights in model.json were not used: \['extra/kernel'\]",
        ),
        (
            lambda w: (fake_model_json(w), weight_bytes(w)[:-4]),
            r"weight shards hold \d+ bytes; the manifest describes \d+",
        ),
        (
            lambda w: (fake_model_json(w, downsample_stride=1), weight_bytes(w)),
            r"model.json is not Keras ResNet50 v1: found \{'res3a_branch2a': \[1, 1\]",
        ),
    ],
    ids=["missing-weight", "unused-weight", "short-shards", "v1.5-topology"],
)
def test_conversion_errors(keras_weights, edit, match: str) -> None:
    model_json, data = edit(keras_weights)
    with pytest.raises(WeightsError, match=match):
        convert_keras_resnet50(model_json, data)


def test_quantised_weights_are_refused(keras_weights) -> None:
    model_json = fake_model_json(keras_weights)
    model_json["weightsManifest"][0]["weights"][0]["quantization"] = {
        "dtype": "uint8",
        "scale": 1.0,
        "min": 0.0,
    }
    with pytest.raises(WeightsError, match=r"quantised: True\); expected plain float32"):
        convert_keras_resnet50(model_json, weight_bytes(keras_weights))
