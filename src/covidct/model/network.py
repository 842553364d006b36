"""ResNet-50 (torchvision) with our classification head, and the knobs that decide what trains."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50

from covidct.model.architecture import FEATURE_DIM, StrideVariant
from covidct.model.train_layers import TrainLayers

STAGES = ("layer1", "layer2", "layer3", "layer4")
BLOCK_NAMES = ("conv1", "bn1", *STAGES)


def build_resnet50(*, num_classes: int, stride_variant: StrideVariant = StrideVariant.V1_5) -> nn.Module:
    """Return torchvision's ResNet-50 with a ``num_classes``-way linear head (randomly initialised).

    Raises:
        ValueError: if ``num_classes`` < 2.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")
    model = resnet50(weights=None)
    if StrideVariant(stride_variant) is StrideVariant.V1:
        for stage in (model.layer2, model.layer3, model.layer4):
            stage[0].conv1.stride = (2, 2)
            stage[0].conv2.stride = (1, 1)
    model.fc = nn.Linear(FEATURE_DIM, num_classes)
    return model


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ImageNet weights into ``model``, everything except the 1000-way ``fc`` head.

    Raises:
        ValueError: if a backbone tensor is missing or has the wrong shape.
    """
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"ImageNet state dict does not fit ResNet-50: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def set_trainable(model: nn.Module, train_layers: TrainLayers) -> None:
    """Freeze everything before ``train_layers``; frozen BatchNorms stay in eval mode (see ``train_mode``)."""
    train_layers = TrainLayers(train_layers)
    first_trainable = {
        TrainLayers.HEAD: len(BLOCK_NAMES),
        TrainLayers.LAYER4: BLOCK_NAMES.index("layer4"),
        TrainLayers.LAYER3: BLOCK_NAMES.index("layer3"),
        TrainLayers.ALL: 0,
    }[train_layers]
    for index, name in enumerate(BLOCK_NAMES):
        getattr(model, name).requires_grad_(index >= first_trainable)
    model.fc.requires_grad_(True)


def train_mode(model: nn.Module) -> None:
    """Put the trainable blocks in training mode and keep frozen ones (their BatchNorm statistics) in eval."""
    model.train()
    for name in BLOCK_NAMES:
        block = getattr(model, name)
        if not any(p.requires_grad for p in block.parameters()):
            block.eval()


def extract_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Return the (N, 2048) globally pooled penultimate features of ``images`` (N, 3, H, W)."""
    return pooled(model, run_stages(model, stem(model, images), STAGES))


def stem(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The 7x7/2 convolution, BatchNorm, ReLU and max-pool before the residual stages."""
    return model.maxpool(model.relu(model.bn1(model.conv1(images))))


def run_stages(model: nn.Module, x: torch.Tensor, stages: tuple[str, ...]) -> torch.Tensor:
    """Run ``x`` through the named residual stages (a consecutive part of ``STAGES``), in order."""
    for name in stages:
        x = getattr(model, name)(x)
    return x


def pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of the last stage's (N, 2048, h, w) maps: the (N, 2048) penultimate features."""
    return torch.flatten(model.avgpool(x), 1)
