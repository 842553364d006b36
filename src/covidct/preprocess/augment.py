"""Training-time augmentation of (1, S, S) slices: what varies between sites but is not disease (torch)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional
from torchvision.transforms import v2


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
    """``image ** gamma``, log-uniform gamma in [1 / max_factor, max_factor]: a non-linear window change."""

    def __init__(self, max_factor: float) -> None:
        super().__init__()
        self.log_max = math.log(max_factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gamma = math.exp((2 * float(torch.rand(())) - 1) * self.log_max)
        return image.clamp(0.0, 1.0) ** gamma


class RandomDownUp(nn.Module):
    """Shrink a (C, S, S) image by a factor in [min_scale, 1) and back: what a low-resolution source lacks."""

    def __init__(self, min_scale: float) -> None:
        super().__init__()
        self.min_scale = min_scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = image.shape[-2:]
        scale = self.min_scale + (1 - self.min_scale) * float(torch.rand(()))
        small = [max(8, round(side * scale)) for side in size]
        shrunk = functional.interpolate(
            image[None], size=small, mode="bilinear", antialias=True, align_corners=False
        )
        return functional.interpolate(shrunk, size=size, mode="bilinear", align_corners=False)[0]
