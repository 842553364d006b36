"""Image -> model input, the same way for every class, in training, evaluation and inference.

The model card stores a ``Preprocessing`` value; inference rebuilds the pipeline from it, so nothing
downstream hard-codes the size or the normalisation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional
from torchvision.transforms import v2

from covidct.preprocess.window import LUNG_WINDOW

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded grayscale slice becomes a (3, size, size) network input.

    The three site steps (see ``covidct.preprocess.site``) run before the resize, in this order:
    ``remove_annotations``, ``crop_field`` (``resize`` then applies to the crop), ``standardise_intensity``.
    They default to off, so a card written before they existed loads as the pipeline it was trained with.
    """

    image_size: int = 224
    resize: str = "the whole image (the body crop when crop_field), bilinear with antialiasing, to a square (aspect not kept)"
    channels: str = "grayscale in [0, 1] replicated to 3 channels"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_field: bool = False
    remove_annotations: bool = False
    standardise_intensity: bool = False
    # DICOM/NIfTI slices are windowed from HU with this "level,width" (covidct.preprocess.window) before the
    # steps above, in training and inference alike; 8-bit PNG/JPEG slices are already windowed and skip it.
    hu_window: str = str(LUNG_WINDOW)

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
    """Augmentation for one (1, S, S) float slice in [0, 1]: what varies between sites but is not disease.

    Random resized crop (zoom and framing), horizontal flip (left/right lungs are both affected by
    COVID-19), a small rotation (patient positioning), brightness/contrast (window, scanner), and, each
    on a share of the slices, gamma (non-linear windows, figure export), a lower resolution (small or
    upscaled figures), blur (reconstruction kernel, JPEG) and noise (dose). All of it is a few elementwise or
    small-kernel operations per slice, cheap next to the network on a CPU.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10),
            v2.ColorJitter(brightness=0.25, contrast=0.25),
            v2.RandomApply([RandomGamma(max_factor=1.5)], p=0.5),
            v2.RandomApply([RandomDownUp(min_scale=0.35)], p=0.3),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.3, 1.2))], p=0.3),
            v2.RandomApply([v2.GaussianNoise(sigma=0.02, clip=True)], p=0.3),
        ]
    )


class RandomGamma(nn.Module):
    """``image ** gamma`` with log-uniform gamma in [1 / max_factor, max_factor]: a non-linear window change."""

    def __init__(self, max_factor: float) -> None:
        super().__init__()
        self.log_max = math.log(max_factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gamma = math.exp((2 * float(torch.rand(())) - 1) * self.log_max)
        return image.clamp(0.0, 1.0) ** gamma


class RandomDownUp(nn.Module):
    """Shrink a (C, S, S) image by a factor in [min_scale, 1) and enlarge it back: the detail a low-resolution source lacks."""

    def __init__(self, min_scale: float) -> None:
        super().__init__()
        self.min_scale = min_scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = image.shape[-2:]
        scale = self.min_scale + (1 - self.min_scale) * float(torch.rand(()))
        small = [max(8, round(side * scale)) for side in size]
        shrunk = functional.interpolate(image[None], size=small, mode="bilinear", antialias=True, align_corners=False)
        return functional.interpolate(shrunk, size=size, mode="bilinear", align_corners=False)[0]
