"""Grad-CAM heatmaps (what the network looked at) and PNG overlays of them on the input slice.

A heatmap is Grad-CAM (Selvaraju et al., ICCV 2017, via pytorch-grad-cam) of the positive class's
logit at the last residual block (``layer4[-1]``, 7 x 7 at 224 px), upsampled to the slice: bright
regions raised the COVID logit. It is computed in float32 without autocast (bf16 gradients are too
coarse) and on the slice as given (no mirror averaging), so it is a look at one forward pass, not
a segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from covidct.preprocess.transforms import Preprocessing, normalize

OVERLAY_ALPHA = 0.45
_MIN_OVERLAY_PX = 256
_CAPTION_PX = 18


def gradcam_heatmaps(
    model: nn.Module, slices: torch.Tensor, *, preprocessing: Preprocessing, target_index: int, device: torch.device, batch_size: int = 8
) -> np.ndarray:
    """Return (N, S, S) float32 heatmaps in [0, 1] for (N, S, S) grayscale slices in [0, 1].

    Each heatmap is scaled to its own maximum (an all-zero map means nothing raised the logit).
    Gradients are needed, so this works inside ``torch.inference_mode`` callers too: it leaves that
    mode for its own forward and backward passes. The model's weights are not changed.
    """
    # Imported here, not at the top: pytorch-grad-cam loads OpenCV and pyplot, which plain predictions never need.
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    heatmaps = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(slices), batch_size):
                gray = slices[start : start + batch_size].to(device=device, dtype=torch.float32).unsqueeze(1).clone()
                # An input that requires grad keeps the graph through frozen (requires_grad=False) stages.
                inputs = normalize(gray, preprocessing).requires_grad_(True)
                targets = [ClassifierOutputTarget(target_index)] * len(inputs)
                heatmaps.append(cam(input_tensor=inputs, targets=targets).astype(np.float32))
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    size = preprocessing.image_size
    return np.clip(np.concatenate(heatmaps), 0.0, 1.0) if heatmaps else np.empty((0, size, size), np.float32)


def overlay_caption(label: str, prob_covid: float | None, ood_score: float | None = None) -> str:
    """The line under an overlay: the label with its probability, or (flagged input) why there is none."""
    if prob_covid is None:
        score = "" if ood_score is None else f"OOD score {ood_score:.1f}, "
        return f"{label}: {score}no COVID probability"
    return f"{label}  P(COVID) = {prob_covid:.3f}"


def render_overlay(slice_gray: np.ndarray, heatmap: np.ndarray, caption: str) -> Image.Image:
    """Return an RGB image: the (S, S) slice in gray, the (S, S) heatmap over it in the jet colormap, ``caption`` below.

    Small slices are enlarged (nearest neighbour) to at least 256 px so the caption stays readable.
    """
    gray = np.clip(np.asarray(slice_gray, dtype=np.float32), 0.0, 1.0)
    heat = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3].astype(np.float32)
    blended = (1 - OVERLAY_ALPHA) * gray[..., None] + OVERLAY_ALPHA * heat
    image = Image.fromarray((blended * 255).round().astype(np.uint8), mode="RGB")
    scale = max(1, -(-_MIN_OVERLAY_PX // image.width))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (image.width, image.height + _CAPTION_PX + 6), "black")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((4, image.height + 3), caption, fill="white", font=ImageFont.load_default(size=_CAPTION_PX - 4))
    return canvas


def overlay_names(paths: Sequence[str]) -> list[str]:
    """``<stem>_cam.png`` for each input path, made unique with ``_2``, ``_3``... (one stem in two folders)."""
    names: list[str] = []
    used: set[str] = set()
    for path in paths:
        stem = Path(path).stem
        name, count = f"{stem}_cam.png", 1
        while name in used:
            count += 1
            name = f"{stem}_{count}_cam.png"
        used.add(name)
        names.append(name)
    return names
