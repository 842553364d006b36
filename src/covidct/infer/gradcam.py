"""Grad-CAM heatmaps: what the network looked at (their PNG overlays: ``infer.overlay``).

A heatmap is Grad-CAM (Selvaraju et al., ICCV 2017, via pytorch-grad-cam) of the positive class's
logit at the last residual block (``layer4[-1]``, 7 x 7 at 224 px), upsampled to the slice: bright
regions raised the COVID logit. It is computed in float32 without autocast (bf16 gradients are too
coarse) and on the slice as given (no mirror averaging), so it is a look at one forward pass, not
a segmentation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidct.preprocess.transforms import Preprocessing, normalize


def gradcam_heatmaps(
    model: nn.Module,
    slices: np.ndarray | torch.Tensor,
    *,
    preprocessing: Preprocessing,
    target_index: int,
    device: torch.device,
    batch_size: int = 8,
) -> np.ndarray:
    """Return (N, S, S) float32 heatmaps in [0, 1] for (N, S, S) grayscale slices in [0, 1].

    Each heatmap is scaled to its own maximum (an all-zero map means nothing raised the logit).
    Gradients are needed, so this works inside ``torch.inference_mode`` callers too: it leaves that
    mode for its own forward and backward passes. The model's weights are not changed.
    """
    # Imported here, not at the top: pytorch-grad-cam loads OpenCV and pyplot, which
    # plain predictions never need.
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    heatmaps = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(slices), batch_size):
                batch = torch.as_tensor(slices[start : start + batch_size])
                gray = batch.to(device=device, dtype=torch.float32).unsqueeze(1).clone()
                # An input that requires grad keeps the graph through frozen (requires_grad=False) stages.
                inputs = normalize(gray, preprocessing).requires_grad_(True)
                targets = [ClassifierOutputTarget(target_index)] * len(inputs)
                heatmaps.append(cam(input_tensor=inputs, targets=targets).astype(np.float32))
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    size = preprocessing.image_size
    return np.clip(np.concatenate(heatmaps), 0.0, 1.0) if heatmaps else np.empty((0, size, size), np.float32)
