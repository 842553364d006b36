"""Keras' ImageNet ResNet50 (as a TF.js layers model) -> a torchvision ResNet-50 state dict.

Pure functions from the parsed ``model.json`` and the concatenated weight shards to tensors; the
download and the cache live in ``weights.py``. Every step is exact in real arithmetic:

- Conv kernels are HWIO in Keras and OIHW in torch; the Dense kernel is (in, out), torch's (out, in).
- Keras convs carry a bias that torchvision's lack; the following BatchNorm absorbs it
  (``running_mean -= bias``).
- Keras BatchNorm uses epsilon 1e-3, torchvision 1e-5: ``running_var += 1e-3 - 1e-5``.
- Keras expects "caffe" input (BGR, 0..255, minus the ImageNet BGR mean); conv1 and bn1 absorb that
  affine map, so the converted model takes torchvision's standard input (RGB in [0, 1], normalised
  with ``IMAGENET_MEAN`` / ``IMAGENET_STD``).
- Keras ResNet50 is "v1": the stride sits on the first 1x1 conv of layers 2-4; build the network with
  ``StrideVariant.V1`` to reproduce the classifier.
- Keras zero-pads before its max pool where torch pads with -inf; after a ReLU both give the same max.

One approximation remains: Keras zero-pads conv1's input in caffe space, torch in normalised space.
A torch zero is ``255 * mean - caffe_mean`` = (-0.005, -0.499, -0.409) caffe units (R, G, B), under
half a grey level, on the 3-pixel border only. Against the original TF.js model (16 images: skimage
photos, noise, a CT-like phantom) it moved class probabilities by at most 8.1e-4, with the same
top-1 everywhere. Converting with ``mean_rgb=KERAS_EXACT_MEAN_RGB`` (and normalising input with that
mean) makes the border exact too: 1.2e-6, float32 noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torchvision.models import resnet50

from covidct.errors import WeightsError
from covidct.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# With this input mean a torch zero is a caffe zero, so even conv1's border matches Keras exactly.
KERAS_EXACT_MEAN_RGB = tuple(value / 255.0 for value in CAFFE_MEAN_BGR[::-1])
TORCH_BN_EPS = 1e-5

InputStats = tuple[float, float, float]

# Keras ResNet50 names stages 2-5 and blocks a, b, c, ...; torchvision names them layer1-4 and 0, 1, ...
_STAGE_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}
_BRANCHES = {
    "branch2a": ("conv1", "bn1"),
    "branch2b": ("conv2", "bn2"),
    "branch2c": ("conv3", "bn3"),
    "branch1": ("downsample.0", "downsample.1"),
}


def keras_conv_bn_pairs() -> list[tuple[str, str, str, str]]:
    """Return (Keras conv, Keras BN, torch conv, torch BN) names for every conv of ResNet-50."""
    pairs = [("conv1", "bn_conv1", "conv1", "bn1")]
    for stage, n_blocks in _STAGE_BLOCKS.items():
        for index in range(n_blocks):
            block = f"{stage}{'abcdef'[index]}"
            for branch, (torch_conv, torch_bn) in _BRANCHES.items():
                if branch == "branch1" and index > 0:
                    continue
                prefix = f"layer{stage - 1}.{index}."
                pairs.append(
                    (f"res{block}_{branch}", f"bn{block}_{branch}", prefix + torch_conv, prefix + torch_bn)
                )
    return pairs


def manifest_shard_paths(model_json: Mapping[str, Any]) -> list[str]:
    """Return the weight shard file names in the order their bytes must be concatenated."""
    return [path for group in model_json["weightsManifest"] for path in group["paths"]]


def read_manifest_weights(model_json: Mapping[str, Any], weight_bytes: bytes) -> dict[str, np.ndarray]:
    """Split the concatenated shards into named arrays, in manifest order.

    Args:
        model_json: the parsed TF.js ``model.json``.
        weight_bytes: every shard of every group, concatenated in manifest order.

    Returns:
        Keras weight name ("res2a_branch2a/kernel") -> float32 array of the manifest's shape.

    Raises:
        WeightsError: if an entry is not plain float32, a name repeats, or the byte count differs.
    """
    entries = [entry for group in model_json["weightsManifest"] for entry in group["weights"]]
    expected_bytes = sum(4 * math.prod(entry["shape"]) for entry in entries)
    if expected_bytes != len(weight_bytes):
        raise WeightsError(
            f"weight shards hold {len(weight_bytes)} bytes; the manifest describes {expected_bytes}"
        )
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        name = entry["name"]
        if entry.get("dtype") != "float32" or "quantization" in entry:
            raise WeightsError(
                f"weight {name!r} is {entry.get('dtype')} (quantised: "
                f"{'quantization' in entry}); expected plain float32"
            )
        if name in arrays:
            raise WeightsError(f"weight {name!r} appears twice in the manifest")
        count = math.prod(entry["shape"])
        flat = np.frombuffer(weight_bytes, dtype="<f4", count=count, offset=offset)
        arrays[name] = flat.reshape(entry["shape"]).astype(np.float32)
        offset += 4 * count
    return arrays


def check_keras_topology(model_json: Mapping[str, Any]) -> dict[str, float]:
    """Check the topology is Keras' ResNet50 v1 and return each BatchNorm's epsilon by layer name.

    Raises:
        WeightsError: if conv1's padding or the stage strides differ from Keras ResNet50 v1.
    """
    layers = {
        layer["config"]["name"]: layer
        for layer in model_json["modelTopology"]["model_config"]["config"]["layers"]
    }
    found = {
        "conv1_pad": layers.get("conv1_pad", {}).get("config", {}).get("padding"),
        "conv1": layers.get("conv1", {}).get("config", {}).get("strides"),
    }
    expected: dict[str, Any] = {"conv1_pad": [[3, 3], [3, 3]], "conv1": [2, 2]}
    for stage in (3, 4, 5):
        for name, strides in ((f"res{stage}a_branch2a", [2, 2]), (f"res{stage}a_branch2b", [1, 1])):
            found[name] = layers.get(name, {}).get("config", {}).get("strides")
            expected[name] = strides
    wrong = {name: value for name, value in found.items() if value != expected[name]}
    if wrong:
        raise WeightsError(
            f"model.json is not Keras ResNet50 v1: found {wrong}, "
            f"expected { ({k: expected[k] for k in wrong}) }"
        )
    return {
        name: float(layer["config"]["epsilon"])
        for name, layer in layers.items()
        if layer["class_name"] == "BatchNormalization"
    }


def fold_caffe_input(
    kernel_oihw_bgr: np.ndarray, *, mean_rgb: InputStats = IMAGENET_MEAN, std_rgb: InputStats = IMAGENET_STD
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite a first-layer kernel that reads caffe input into one that reads normalised RGB input.

    Caffe input is ``x_bgr * 255 - CAFFE_MEAN_BGR`` (0..255); torch input is
    ``(x_rgb - mean) / std`` with ``x_rgb`` in [0, 1]. Per RGB channel the caffe value is
    ``a * x_torch + shift`` with ``a = 255 * std`` and ``shift = 255 * mean - caffe_mean``, so the
    kernel scales by ``a`` and the constant ``shift`` becomes an extra output bias.

    Args:
        kernel_oihw_bgr: (O, 3, kH, kW) float64 kernel whose input channels are B, G, R.
        mean_rgb: the torch input normalisation's mean; ``KERAS_EXACT_MEAN_RGB`` makes ``shift``
            zero, so conv1's zero padding matches Keras' exactly.
        std_rgb: the torch input normalisation's standard deviation.

    Returns:
        The (O, 3, kH, kW) kernel over R, G, B torch input, and the (O,) bias to add.
    """
    kernel_rgb = kernel_oihw_bgr[:, ::-1]
    scale = 255.0 * np.asarray(std_rgb, dtype=np.float64)
    shift = 255.0 * np.asarray(mean_rgb, dtype=np.float64) - np.asarray(CAFFE_MEAN_BGR[::-1])
    kernel = kernel_rgb * scale[None, :, None, None]
    bias = (kernel_rgb * shift[None, :, None, None]).sum(axis=(1, 2, 3))
    return kernel, bias


def conv_bn_to_torch(
    kernel_hwio: np.ndarray,
    bias: np.ndarray,
    bn: Mapping[str, np.ndarray],
    *,
    eps_keras: float,
    input_stats: tuple[InputStats, InputStats] | None = None,
) -> dict[str, np.ndarray]:
    """Convert one Keras Conv2D (with bias) + BatchNormalization pair to torch conv + BN tensors.

    Args:
        kernel_hwio: (kH, kW, I, O) Keras kernel.
        bias: (O,) Keras conv bias, folded into the BN's running mean.
        bn: Keras BN arrays ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``, each (O,).
        eps_keras: the Keras layer's epsilon; the running variance absorbs its difference to 1e-5.
        input_stats: (mean, std) of the torch input normalisation when this conv reads the network
            input (caffe input is then folded in); None for inner convs.

    Returns:
        Arrays keyed by the torch suffix: ``conv.weight`` (O, I, kH, kW) and ``bn.weight``,
        ``bn.bias``, ``bn.running_mean``, ``bn.running_var`` (O,), all float32.
    """
    kernel = kernel_hwio.astype(np.float64).transpose(3, 2, 0, 1)
    total_bias = bias.astype(np.float64)
    if input_stats is not None:
        kernel, input_bias = fold_caffe_input(kernel, mean_rgb=input_stats[0], std_rgb=input_stats[1])
        total_bias = total_bias + input_bias
    out = {
        "conv.weight": kernel,
        "bn.weight": bn["gamma"],
        "bn.bias": bn["beta"],
        "bn.running_mean": bn["moving_mean"].astype(np.float64) - total_bias,
        "bn.running_var": bn["moving_variance"].astype(np.float64) + (eps_keras - TORCH_BN_EPS),
    }
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in out.items()}


def convert_keras_resnet50(
    model_json: Mapping[str, Any],
    weight_bytes: bytes,
    *,
    mean_rgb: InputStats = IMAGENET_MEAN,
    std_rgb: InputStats = IMAGENET_STD,
) -> dict[str, torch.Tensor]:
    """Return a torchvision ResNet-50 state dict (1000-way ``fc`` included) from the Keras model.

    Load it into ``build_resnet50(num_classes=1000, stride_variant=StrideVariant.V1)``; it expects
    RGB in [0, 1] normalised with ``mean_rgb``/``std_rgb`` (torchvision's standard by default, so
    every weight source shares one preprocessing) and ``fc`` outputs logits.

    Raises:
        WeightsError: if the topology is not Keras ResNet50 v1, a weight is missing, left unused
            or has a shape torchvision does not expect.
    """
    epsilons = check_keras_topology(model_json)
    arrays = read_manifest_weights(model_json, weight_bytes)
    unused = set(arrays)

    def take(name: str) -> np.ndarray:
        if name not in arrays:
            raise WeightsError(f"model.json has no weight {name!r}; expected Keras ResNet50 layer names")
        unused.discard(name)
        return arrays[name]

    state: dict[str, np.ndarray] = {}
    for keras_conv, keras_bn, torch_conv, torch_bn in keras_conv_bn_pairs():
        bn = {key: take(f"{keras_bn}/{key}") for key in ("gamma", "beta", "moving_mean", "moving_variance")}
        converted = conv_bn_to_torch(
            take(f"{keras_conv}/kernel"),
            take(f"{keras_conv}/bias"),
            bn,
            eps_keras=epsilons[keras_bn],
            input_stats=(mean_rgb, std_rgb) if keras_conv == "conv1" else None,
        )
        for key, value in converted.items():
            layer, _, param = key.partition(".")
            state[f"{torch_conv if layer == 'conv' else torch_bn}.{param}"] = value
    state["fc.weight"] = np.ascontiguousarray(take("fc1000/kernel").T)
    state["fc.bias"] = take("fc1000/bias")
    if unused:
        raise WeightsError(f"{len(unused)} weights in model.json were not used: {sorted(unused)[:5]}")
    return _to_torchvision_state(state)


def _to_torchvision_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Check ``arrays`` against torchvision's ResNet-50 keys and shapes; add ``num_batches_tracked``."""
    with torch.device("meta"):
        reference = resnet50().state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, ref in reference.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key not in arrays:
            raise WeightsError(f"conversion produced no tensor for torchvision key {key!r}")
        elif tuple(arrays[key].shape) != tuple(ref.shape):
            raise WeightsError(
                f"{key}: converted shape {tuple(arrays[key].shape)}, torchvision expects {tuple(ref.shape)}"
            )
        else:
            state[key] = torch.from_numpy(np.array(arrays[key], dtype=np.float32))
    extra = set(arrays) - set(reference)
    if extra:
        raise WeightsError(f"conversion produced keys torchvision's ResNet-50 lacks: {sorted(extra)[:5]}")
    return state
