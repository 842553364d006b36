"""The training loss of one batch: weighted cross-entropy, optionally with label smoothing and mixup.

Both are regularisers for small datasets (UCSD-AI4H trains on ~450 slices): label smoothing (Szegedy et al.
2016) keeps the logits from growing without bound on slices the network already separates; mixup (Zhang
et al. 2018, arXiv:1710.09412) trains on convex blends of two slices and their labels. Measured under
cross-validation for issue 13 (``bench/recipes.py``, recipes ``label-smoothing`` and ``mixup``; BENCHMARKS.md,
"Loss regularisers"): neither beat the default, so both are off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional


@dataclass(frozen=True)
class Mix:
    """One batch's blend: each input becomes ``share`` x itself + (1 - ``share``) x input ``partner[i]``."""

    share: float
    partner: torch.Tensor  # (N,) int64, a permutation of the batch

    def blend(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, ...) inputs blended with their partners, the same shape and dtype."""
        return self.share * inputs + (1.0 - self.share) * inputs[self.partner.to(inputs.device)]


def draw_mix(batch_size: int, alpha: float, rng: np.random.Generator) -> Mix | None:
    """A blend for a batch: share ~ Beta(alpha, alpha), partners a random permutation; None when ``alpha``
    is 0 (mixup off) or the batch has a single slice."""
    if alpha <= 0 or batch_size < 2:
        return None
    share = float(rng.beta(alpha, alpha))
    return Mix(share, torch.from_numpy(rng.permutation(batch_size)))


def batch_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    mix: Mix | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The weighted mean cross-entropy of (N, C) float ``logits`` against (N,) ``labels``.

    ``weights`` are the per-slice loss weights (``cell_weights``). Under a ``mix`` each blended slice is
    scored against both of its labels, each term weighted by its share and its own slice's weight, so a
    blend of two slices carries what the two carry between them and the (source, class) balance holds.
    """

    def against(targets: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)

    if mix is None:
        return (against(labels) * weights).sum() / weights.sum()
    partner = mix.partner.to(labels.device)
    own, other = against(labels), against(labels[partner])
    weighted = mix.share * weights * own + (1.0 - mix.share) * weights[partner] * other
    return weighted.sum() / weights.sum()
