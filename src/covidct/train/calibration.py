"""Post-hoc calibration on validation data: temperature scaling and the operating threshold."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_curve


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the temperature T > 0 that minimises the validation NLL of ``softmax(logits / T)``.

    Guo et al. 2017: a single scalar fixes the over-confidence of fine-tuned networks without changing
    their ranking (AUC) or, at a matching threshold, their decisions.
    """
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits, labels = logits.double(), labels.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, *, target_sensitivity: float | None = None) -> tuple[float, str]:
    """Return (threshold, rule) on positive-class probabilities, chosen on validation data only.

    Default: Youden's J (max sensitivity + specificity - 1). With ``target_sensitivity``: the highest
    threshold whose validation sensitivity reaches the target (the most specific such point).
    """
    fpr, tpr, thresholds = roc_curve(y_true, prob, drop_intermediate=False)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if target_sensitivity is None:
        best = int(np.argmax(tpr - fpr))
        return float(thresholds[best]), "youden_j"
    reaching = np.flatnonzero(tpr >= target_sensitivity)
    return float(thresholds[reaching[0]]), f"sensitivity>={target_sensitivity:g}"
