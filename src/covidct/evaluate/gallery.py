"""The report's gallery: Grad-CAM overlays of true positives, false positives and false negatives.

Metrics say how often the model is right; the gallery shows what it looked at when it was right and
when it was wrong, which is where shortcuts (text, arrows, borders, the scanner table) show up.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from covidct.infer.gradcam import gradcam_heatmaps
from covidct.infer.overlay import render_overlay
from covidct.model.card import ModelCard
from covidct.png import png_bytes

TRUE_POSITIVES = "true positives"
FALSE_POSITIVES = "false positives"
FALSE_NEGATIVES = "false negatives"
GALLERY_KINDS = (TRUE_POSITIVES, FALSE_POSITIVES, FALSE_NEGATIVES)
PER_KIND = 4


@dataclass(frozen=True)
class GalleryImage:
    """One overlay (PNG bytes) of a slice, with the kind of case it is and its caption."""

    kind: str
    caption: str
    png: bytes


def pick_gallery_cases(
    y_true: np.ndarray, prob: np.ndarray, threshold: float, *, per_kind: int = PER_KIND
) -> dict[str, np.ndarray]:
    """Indices of up to ``per_kind`` slices per kind, the most confident first.

    True and false positives by highest probability, false negatives by lowest: the cases where the
    model was surest are the most telling, right or wrong.

    Args:
        y_true: (N,) slice labels in {0, 1}.
        prob: (N,) positive-class probabilities.
        threshold: ``prob >= threshold`` is called positive.
        per_kind: the most images per kind.
    """
    y, p = np.asarray(y_true), np.asarray(prob)
    called = p >= threshold
    order = np.argsort(-p, kind="stable")
    cases = {
        TRUE_POSITIVES: order[(y[order] == 1) & called[order]],
        FALSE_POSITIVES: order[(y[order] == 0) & called[order]],
        FALSE_NEGATIVES: order[::-1][(y[order[::-1]] == 1) & ~called[order[::-1]]],
    }
    return {kind: indices[:per_kind] for kind, indices in cases.items()}


def build_gallery(
    model: nn.Module,
    card: ModelCard,
    slices: np.ndarray,
    *,
    paths: Sequence[str],
    y_true: np.ndarray,
    prob: np.ndarray,
    device: torch.device,
    per_kind: int = PER_KIND,
) -> list[GalleryImage]:
    """Grad-CAM overlays of the cases ``pick_gallery_cases`` chooses, in ``GALLERY_KINDS`` order.

    Args:
        model: the network, on ``device``.
        card: its card (preprocessing, positive class, threshold).
        slices: (N, S, S) grayscale slices in [0, 1] as scored.
        paths: (N,) their files, named in the captions.
        y_true: (N,) labels in {0, 1}; prob: (N,) positive-class probabilities.
        device: where the backward passes run.
        per_kind: the most images per kind.
    """
    cases = pick_gallery_cases(y_true, prob, card.decision.threshold, per_kind=per_kind)
    chosen = [(kind, int(index)) for kind in GALLERY_KINDS for index in cases[kind]]
    if not chosen:
        return []
    picked = slices[[index for _, index in chosen]]
    heatmaps = gradcam_heatmaps(
        model, picked, preprocessing=card.preprocessing, target_index=card.positive_index, device=device
    )
    images = []
    for (kind, index), gray, heatmap in zip(chosen, picked, heatmaps, strict=True):
        caption = f"P({card.positive_class}) = {prob[index]:.3f}"
        overlay = render_overlay(np.asarray(gray, dtype=np.float32), heatmap, caption)
        images.append(GalleryImage(kind, Path(paths[index]).name, png_bytes(overlay)))
    return images


def gallery_section(images: Sequence[GalleryImage]) -> str:
    """The report's HTML section: one row of overlays per kind, or a line saying there were none."""
    intro = (
        "<h2>Grad-CAM gallery</h2><p class='small'>Where the "
        "evidence for the positive class was (red is most) in the "
        "slices the model was surest about; each kind shows its most confident cases.</p>"
    )
    parts = [intro]
    for kind in GALLERY_KINDS:
        of_kind = [image for image in images if image.kind == kind]
        parts.append(f"<h3>{html.escape(kind.capitalize())} ({len(of_kind)})</h3>")
        if not of_kind:
            parts.append(f"<p class='small'>No {html.escape(kind)} in this split.</p>")
        for image in of_kind:
            data = base64.b64encode(image.png).decode("ascii")
            caption = html.escape(image.caption)
            parts.append(
                f"<figure class='cam'><img alt='{html.escape(kind)}: {caption}' "
                f"src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption></figure>"
            )
    return "\n".join(parts)
