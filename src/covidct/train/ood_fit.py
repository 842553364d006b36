"""After training: fit the out-of-distribution guard on the training slices, set its threshold on validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from covidct.infer.ood import (
    DEFAULT_PASS_RATE,
    OodDetector,
    features_and_logits,
    fit_detector,
    with_threshold,
)
from covidct.preprocess.transforms import Preprocessing


@dataclass(frozen=True)
class OodFit:
    """A fitted detector and the facts the model card records about its fit."""

    detector: OodDetector
    facts: dict


def fit_ood_guard(
    model: nn.Module,
    *,
    train: tuple[torch.Tensor, torch.Tensor],
    val_features: torch.Tensor,
    preprocessing: Preprocessing,
    device: torch.device,
    use_bf16: bool,
    tta_hflip: bool,
    pass_rate: float = DEFAULT_PASS_RATE,
) -> OodFit:
    """Fit the detector on the features of ``train`` (slices, labels); threshold it so ``pass_rate`` of the validation slices pass.

    The cost is one inference pass over the training slices (bf16 where the device has it; with
    ``tta_hflip`` each slice and its mirror, as inference computes features). ``val_features`` are
    the ones calibration computed. The threshold comes from validation slices, which the detector's
    means and covariance never saw (training features sit much closer to them), so the pass rate
    carries over to new CT slices of the same kind.
    """
    model.eval()
    train_features, _ = features_and_logits(model, train[0], preprocessing=preprocessing, device=device, use_bf16=use_bf16, tta_hflip=tta_hflip)
    detector = fit_detector(train_features, train[1])
    val_scores = detector.scores(val_features)
    detector = with_threshold(detector, val_scores, pass_rate=pass_rate)
    facts = {
        "target_val_pass_rate": pass_rate,
        "val_pass_rate": round(float(np.mean(detector.is_in_distribution(val_scores))), 4),
        "n_train": len(train_features),
        "n_val": len(val_features),
    }
    return OodFit(detector, facts)
