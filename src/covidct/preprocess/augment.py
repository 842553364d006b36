"""Training-time augmentation of (1, S, S) slices: what varies between sites but is not disease (torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional
from torchvision.transforms import v2


def train_augmentation(
    image_size: int, *, light: bool = False, vary_export: bool = False, narrow_windows: bool = False
) -> v2.Compose:
    """Augmentation for one (1, S, S) float slice in [0, 1]: what varies between sites but is not disease.

    Random resized crop (zoom and framing), horizontal flip (left/right lungs are both affected by
    COVID-19), a small rotation (patient positioning), brightness/contrast (window, scanner), and, each
    on a share of the slices, gamma (non-linear windows, figure export), a lower resolution (small or
    upscaled figures), blur (reconstruction kernel, JPEG) and noise (dose). All of it is a few elementwise or
    small-kernel operations per slice, cheap next to the network on a CPU. ``light`` keeps only the UCSD
    baseline's geometry (random resized crop, scale 0.5-1, and the flip): gray levels pass unchanged.
    ``vary_export`` adds ``RandomExport``: the slice as another site's pipeline might have exported it
    (window, field of view); ``narrow_windows`` adds ``RandomNarrowWindow``: what a narrower window clips.
    """
    export = [RandomExport()] if vary_export else []
    if narrow_windows:
        export.append(RandomNarrowWindow())
    if light:
        return v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                *export,
            ]
        )
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10),
            *export,
            v2.ColorJitter(brightness=0.25, contrast=0.25),
            v2.RandomApply([RandomGamma(max_factor=1.5)], p=0.5),
            v2.RandomApply([RandomDownUp(min_scale=0.35)], p=0.3),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.3, 1.2))], p=0.3),
            v2.RandomApply([v2.GaussianNoise(sigma=0.02, clip=True)], p=0.3),
        ]
    )


def contrastive_augmentation(image_size: int) -> v2.Compose:
    """MoCo v2's augmentation (Chen et al. 2020) for one (1, S, S) float CT slice in [0, 1].

    Random resized crop (scale 0.2-1), horizontal flip, brightness/contrast jitter (p 0.8), gamma
    (p 0.5) and Gaussian blur (sigma 0.1-2, kernel about a tenth of the side, p 0.5). No hue, saturation
    or grayscale steps: a CT slice is one gray channel replicated to three, and has no colour to vary.
    """
    kernel = max(3, image_size // 10) | 1
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            v2.RandomApply([RandomGamma(max_factor=1.5)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))], p=0.5),
        ]
    )


class TwoViews(nn.Module):
    """Two independent draws of ``augment`` on one (1, S, S) slice, stacked as (2, S, S): a positive pair."""

    def __init__(self, augment: nn.Module) -> None:
        super().__init__()
        self.augment = augment

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.augment(image), self.augment(image)])


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


@dataclass(frozen=True)
class Export:
    """How another site might have exported an already windowed 8-bit slice.

    A window ``contrast`` times as narrow (below 1: wider, air no longer black) around a level moved by
    ``brightness`` (in units of the old window's width), then, when ``fov_radius`` is set, a circular field
    of view: its radius as a share of half the height and half the width (1.0 touches the edges, larger
    clips only the corners; a circle once the pipeline resizes the slice to a square), centred ``fov_shift``
    (shares of the height and width) off the middle, and ``padding`` as the gray level outside it. Scanners
    pad outside the reconstruction circle; some exports show that padding gray instead of black.
    """

    contrast: float = 1.0
    brightness: float = 0.0
    fov_radius: float | None = None
    fov_shift: tuple[float, float] = (0.0, 0.0)
    padding: float = 0.0


def export_as(gray: torch.Tensor, export: Export) -> torch.Tensor:
    """Return (..., H, W) float in [0, 1] ``gray`` re-exported as ``export`` says (same shape and dtype).

    A window change on an 8-bit slice is linear in its gray levels: what the old window clipped stays
    clipped (``export_as`` cannot bring back detail, only compress, stretch and shift what is there).
    """
    out = gray
    if (export.contrast, export.brightness) != (1.0, 0.0):
        out = ((gray - 0.5) * export.contrast + 0.5 + export.brightness).clamp(0.0, 1.0)
    if export.fov_radius is None:
        return out
    height, width = gray.shape[-2:]
    rows = torch.linspace(-1.0, 1.0, height)[:, None] - 2 * export.fov_shift[0]
    cols = torch.linspace(-1.0, 1.0, width)[None, :] - 2 * export.fov_shift[1]
    outside = rows**2 + cols**2 > export.fov_radius**2
    return out.masked_fill(outside, export.padding)


class RandomExport(nn.Module):
    """``export_as`` with a random ``Export`` for each slice: what a new site's export pipeline changes.

    Each part on a share of the slices: a window from 2.5x as wide to 1.5x as narrow (log-uniform) with its
    level moved by up to a tenth of the width either way (wide windows raise the black level: air turns gray);
    and a circular field of view (radius 0.8-1.2 of half the side, centre up to 5% off) padded black,
    or gray (0.1-0.7) like the exports that made covidct call almost every slice non-COVID.
    """

    def __init__(self, p_window: float = 0.5, p_fov: float = 0.4, p_gray_padding: float = 0.6) -> None:
        super().__init__()
        self.p_window, self.p_fov, self.p_gray_padding = p_window, p_fov, p_gray_padding

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        return export_as(gray, self.draw())

    def draw(self) -> Export:
        """One random ``Export`` (torch's generator, so the training seed fixes it)."""
        u = torch.rand(8).tolist()
        export = Export()
        if u[0] < self.p_window:
            contrast = math.exp(math.log(0.4) + u[1] * math.log(1.5 / 0.4))  # log-uniform, 0.4 to 1.5
            export = Export(contrast=contrast, brightness=0.2 * u[2] - 0.1)
        if u[3] < self.p_fov:
            padding = 0.1 + 0.6 * u[5] if u[4] < self.p_gray_padding else 0.0
            shift = (0.1 * u[6] - 0.05, 0.1 * u[7] - 0.05)
            radius = 0.8 + 0.4 * float(torch.rand(()))
            export = Export(
                export.contrast, export.brightness, fov_radius=radius, fov_shift=shift, padding=padding
            )
        return export


class RandomNarrowWindow(nn.Module):
    """A window 1 to ``max_factor`` times as narrow (log-uniform) as a standardised slice shows it, on a
    share ``p`` of the slices: the gray levels below ``low`` and above ``high`` clipped, the rest stretched to
    [0, 1], ``high - low = 1 / factor``, the clipped share split between the dark and bright ends at random.

    The augmentation for a model that standardises intensity (``site.standardise_intensity``), which maps the
    field's 1st and 99th percentiles to 0 and 1 and so undoes any window change that leaves them inside the
    gray range. What a narrower export leaves is where it clipped them: UCSD figures are saved with the bone
    white (99th percentile 1.0), so a 1.5x narrower export, standardised, is the slice brightened 1.16-1.33x
    from black, lungs denser (session 36, BENCHMARKS.md). Until 2026-12-07 this class narrowed around the
    middle gray instead, which darkens the lungs. Neither form has yet held a narrower re-export's
    specificity within 0.10 (BENCHMARKS.md). Twice as narrow at most: the 1.5x re-export is inside the range.
    """

    def __init__(self, max_factor: float = 2.0, p: float = 0.5) -> None:
        super().__init__()
        self.max_factor, self.p = max_factor, p

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        low, high = self.draw()
        if (low, high) == (0.0, 1.0):
            return gray
        return ((gray - low) / (high - low)).clamp(0.0, 1.0)

    def draw(self) -> tuple[float, float]:
        """The gray levels (low, high) that a random narrower window stretches to black and white, (0.0, 1.0)
        for the slice as it is (torch's generator: the training seed fixes it)."""
        u = torch.rand(3).tolist()
        if u[0] >= self.p:
            return 0.0, 1.0
        clipped = 1.0 - math.exp(-u[1] * math.log(self.max_factor))
        return clipped * u[2], 1.0 - clipped * (1.0 - u[2])
