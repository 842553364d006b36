"""Batched forward passes over decoded slices, shared by training (validation), evaluation and inference."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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
    for start in range(0, len(slices), batch_size):
        batch = slices[start : start + batch_size].to(device=device, dtype=torch.float32).unsqueeze(1)
        inputs = normalize(batch, preprocessing).contiguous(memory_format=torch.channels_last)
        with autocast(device, use_bf16):
            logits = net(inputs).float()
            if tta_hflip:
                logits = (logits + net(inputs.flip(-1)).float()) / 2
        outputs.append(logits.cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in eval mode and channels_last (the fast layout for oneDNN and cuDNN)."""
    return model.to(device=device, memory_format=torch.channels_last).eval()
