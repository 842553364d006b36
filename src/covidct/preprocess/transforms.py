"""Image -> model input, the same way for every class, in training, evaluation and inference.

The model card stores a ``Preprocessing`` value; inference rebuilds the pipeline from it, so nothing
downstream hard-codes the size or the normalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded grayscale slice becomes a (3, size, size) network input."""

    image_size: int = 224
    resize: str = "whole image, bilinear with antialiasing, to a square (no crop, aspect not kept)"
    channels: str = "grayscale in [0, 1] replicated to 3 channels"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})


def resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a (H, W) float32 [0, 1] slice to (size, size) float32, antialiased (PIL's bilinear filter)."""
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


def normalize(gray: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Map (N, 1, S, S) grayscale in [0, 1] to the (N, 3, S, S) normalised network input."""
    mean = torch.tensor(preprocessing.mean, dtype=gray.dtype, device=gray.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=gray.dtype, device=gray.device).view(1, 3, 1, 1)
    return (gray.expand(-1, 3, -1, -1) - mean) / std


def train_augmentation(image_size: int) -> v2.Compose:
    """Augmentation for one (1, S, S) float slice: what varies between scans but is not disease.

    Random resized crop (zoom and framing), horizontal flip (left/right lungs are both affected by
    COVID-19), a small rotation (patient positioning), and brightness/contrast (window and scanner).
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10),
            v2.ColorJitter(brightness=0.25, contrast=0.25),
        ]
    )
