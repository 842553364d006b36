"""The torch Dataset that feeds decoded slices to training."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset


class SliceDataset(Dataset):
    """(1, S, S) float32 slices, class indices and loss weights, with an optional per-sample augmentation."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.weights = weights
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.images[index].unsqueeze(0).float()
        if self.augment is not None:
            image = self.augment(image).clamp(0.0, 1.0)
        return image, self.labels[index], self.weights[index]
