"""Batched forward passes over decoded slices, shared by training (validation), evaluation and inference."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from covidct.model.device import autocast
from covidct.preprocess.transforms import Preprocessing, normalize


@torch.inference_mode()
def predict_logits(
    net: Callable[[torch.Tensor], torch.Tensor],
    slices: torch.Tensor,
    *,
    preprocessing: Preprocessing,
    device: torch.device,
    use_bf16: bool,
    batch_size: int = 32,
    tta_hflip: bool = False,
) -> torch.Tensor:
    """Return float32 (N, C) logits for (N, S, S) grayscale slices in [0, 1].

    With ``tta_hflip`` the logits of each slice and its mirror image are averaged (the model was
    trained with flips, so both views are in-distribution and averaging lowers the variance).
    """
    outputs = []
    # One autocast region for all batches: autocast keeps its bf16 copies of the weights until the region
    # ends, so they are cast once per call instead of once per batch.
    with autocast(device, use_bf16):
        for start in range(0, len(slices), batch_size):
            batch = slices[start : start + batch_size].to(device=device, dtype=torch.float32).unsqueeze(1)
            inputs = normalize(batch, preprocessing).contiguous(memory_format=torch.channels_last)
            logits = net(inputs).float()
            if tta_hflip:
                logits = (logits + net(inputs.flip(-1)).float()) / 2
            outputs.append(logits.cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Fold ``model``'s BatchNorms into its convolutions; move it to ``device`` in
    eval mode and channels_last.

    channels_last is the fast layout for oneDNN and cuDNN. In eval mode a BatchNorm is an affine map
    that folds exactly into the convolution before it (ONNX Runtime does the same to the export), and
    left alone its 53 layers take about a fifth of a CPU forward pass. The model is changed in place:
    it is for inference (and Grad-CAM, whose gradients the folded convolutions give the same) from then on.
    """
    return fold_batch_norms(model.eval()).to(device=device, memory_format=torch.channels_last)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Replace every eval-mode (convolution, BatchNorm) pair of a ResNet with the folded
    convolution and an identity.

    The pairs are torchvision's: ``convK``/``bnK`` attributes of one module, and a ``downsample``
    Sequential of a convolution and a BatchNorm.
    """
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())
    return model


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        return [
            (a, b)
            for a, b in pairwise(names)
            if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d)
        ]
    return [
        (name, "bn" + name.removeprefix("conv"))
        for name, child in children.items()
        if name.startswith("conv")
        and isinstance(child, nn.Conv2d)
        and isinstance(children.get("bn" + name.removeprefix("conv")), nn.BatchNorm2d)
    ]
