"""PNG overlays of a Grad-CAM heatmap on the slice the model saw, with a caption (numpy and Pillow only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OVERLAY_ALPHA = 0.45
_MIN_OVERLAY_PX = 256
_CAPTION_PX = 18


def overlay_caption(label: str, prob_covid: float | None, ood_score: float | None = None) -> str:
    """The line under an overlay: the label with its probability, or (flagged input) why there is none."""
    if prob_covid is None:
        score = "" if ood_score is None else f"OOD score {ood_score:.1f}, "
        return f"{label}: {score}no COVID probability"
    return f"{label}  P(COVID) = {prob_covid:.3f}"


def render_overlay(slice_gray: np.ndarray, heatmap: np.ndarray, caption: str) -> Image.Image:
    """Return an RGB image: the (S, S) slice in gray, its (S, S) heatmap over it (jet), ``caption`` below.

    Small slices are enlarged (nearest neighbour) to at least 256 px so the caption stays readable.
    """
    # Here, not at the top: the server and the PACS service import this module when they start, and
    # matplotlib would add ~0.15 s to every start for a colour map only Grad-CAM answers draw (issue 16).
    from matplotlib import colormaps

    gray = np.clip(np.asarray(slice_gray, dtype=np.float32), 0.0, 1.0)
    heat = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3].astype(np.float32)
    blended = (1 - OVERLAY_ALPHA) * gray[..., None] + OVERLAY_ALPHA * heat
    image = Image.fromarray((blended * 255).round().astype(np.uint8), mode="RGB")
    scale = max(1, -(-_MIN_OVERLAY_PX // image.width))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (image.width, image.height + _CAPTION_PX + 6), "black")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text(
        (4, image.height + 3), caption, fill="white", font=ImageFont.load_default(size=_CAPTION_PX - 4)
    )
    return canvas


def overlay_names(paths: Sequence[str]) -> list[str]:
    """``<stem>_cam.png`` for each input path, made unique with ``_2``, ``_3``... (one stem, two folders)."""
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
