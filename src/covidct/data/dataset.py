"""Decoded slices held in memory, and the torch Dataset that feeds them to training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from covidct.errors import InputError
from covidct.io.discover import InputFailure
from covidct.io.images import read_grayscale
from covidct.preprocess.transforms import resize_gray

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DecodedSlices:
    """Slices that decoded, as (N, S, S) float16 in [0, 1], with their source indices, and those that did not."""

    images: torch.Tensor
    indices: np.ndarray
    failures: list[InputFailure]


def decode_slices(paths: Sequence[Path], image_size: int, *, progress: Progress | None = None) -> DecodedSlices:
    """Decode and resize every path once; a file that fails is recorded and the rest go on.

    Holding the resized slices in memory (224 x 224 x 2 bytes each) lets every epoch skip PNG decoding,
    which on a 2-core machine would otherwise compete with the network for the CPU.
    """
    images, indices, failures = [], [], []
    for index, path in enumerate(paths):
        try:
            images.append(resize_gray(read_grayscale(path), image_size))
            indices.append(index)
        except InputError as error:
            failures.append(InputFailure(str(path), error.reason))
        if progress:
            progress(index + 1, len(paths))
    # float16 in numpy, not torch: predict decodes in a background thread, where a torch op would start a second
    # OpenMP team competing with the forward pass for the cores (the values are the same, both round to nearest even).
    stacked = torch.from_numpy(np.stack(images).astype(np.float16)) if images else torch.empty(0, image_size, image_size, dtype=torch.float16)
    return DecodedSlices(stacked, np.asarray(indices, dtype=np.int64), failures)


class SliceDataset(Dataset):
    """(1, S, S) float32 slices and class indices, with an optional per-sample augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].unsqueeze(0).float()
        if self.augment is not None:
            image = self.augment(image).clamp(0.0, 1.0)
        return image, self.labels[index]
