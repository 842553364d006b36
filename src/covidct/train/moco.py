"""MoCo v2: a ResNet-50 learns CT slices without labels by telling two views of a slice apart from others.

He et al. 2020 (MoCo, arXiv:1911.05722) and Chen et al. 2020 (v2, arXiv:2003.04297), the pre-training of
the Self-Trans result on UCSD-AI4H COVID-CT. A query encoder (the ResNet-50 that fine-tuning later starts
from, with a 2048 -> 2048 -> 128 MLP head in place of ``fc``) is trained so that one view of a slice is
closer to a second view through the key encoder (a slowly moving average of the query encoder) than to
the keys of earlier batches, kept in a queue. The queue is what makes small CPU batches work: each query
meets ``queue_size`` negatives whatever the batch size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional

from covidct.model.architecture import FEATURE_DIM

PROJECTION_DIM = 128


class MoCo(nn.Module):
    """Query and key encoders, the queue of negatives and the InfoNCE loss.

    ``forward(queries, keys)`` takes two augmented views of the same (N, 3, S, S) batch and returns the
    loss; it also moves the key encoder and pushes the batch's keys into the queue. The queue and its
    write position are buffers, so they travel with ``state_dict`` (resume).
    """

    def __init__(
        self, encoder: nn.Module, *, queue_size: int, momentum: float, temperature: float, bn_splits: int
    ) -> None:
        super().__init__()
        encoder.fc = nn.Sequential(
            nn.Linear(FEATURE_DIM, FEATURE_DIM), nn.ReLU(inplace=True), nn.Linear(FEATURE_DIM, PROJECTION_DIM)
        )
        self.query = encoder
        self.key = copy.deepcopy(encoder).requires_grad_(False)
        self.momentum, self.temperature, self.bn_splits = momentum, temperature, bn_splits
        self.register_buffer("queue", functional.normalize(torch.randn(queue_size, PROJECTION_DIM), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = functional.normalize(_split_bn_forward(self.query, queries, self.bn_splits).float(), dim=1)
        with torch.no_grad():
            self._move_key_encoder()
            order = torch.randperm(len(keys), device=keys.device)
            shuffled = _split_bn_forward(self.key, keys[order], self.bn_splits)
            k = functional.normalize(shuffled[order.argsort()].float(), dim=1)
        positives = (q * k).sum(dim=1, keepdim=True)
        # A copy, as in MoCo's reference code: ``_enqueue`` overwrites the queue before the backward pass
        # needs it (under bf16 autocast the matmul's cast made the copy, which hid this; fp32 failed).
        negatives = q @ self.queue.clone().T
        logits = torch.cat([positives, negatives], dim=1) / self.temperature
        loss = functional.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        self._enqueue(k)
        return loss

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The query encoder's ResNet-50 weights without the projection head, under torchvision's names."""
        return {key: value for key, value in self.query.state_dict().items() if not key.startswith("fc.")}

    @torch.no_grad()
    def _move_key_encoder(self) -> None:
        for query, key in zip(self.query.parameters(), self.key.parameters(), strict=True):
            key.mul_(self.momentum).add_(query.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest entries with ``keys`` (wrapping round the end)."""
        size = len(self.queue)
        positions = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[positions[-size:]] = keys[-size:]
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)


def _split_bn_forward(encoder: nn.Module, images: torch.Tensor, splits: int) -> torch.Tensor:
    """``encoder`` on ``splits`` consecutive parts of the batch, so each part gets its own BN statistics.

    With the key batch shuffled first, a query and its key are normalised with different slices: the
    single-device form of MoCo's shuffled BN (the split batch norm of the authors' one-GPU demo).
    """
    parts = images.chunk(splits) if len(images) >= 2 * splits else (images,)
    return torch.cat([encoder(part) for part in parts])
