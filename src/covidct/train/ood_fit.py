"""After training: fit the out-of-distribution guard on the training slices, set its threshold on validation.

A threshold at the 95th percentile of the validation slices' scores passes 95% of *those* slices, but
slices of one scan are alike, so a new patient's scan sits further out than the pooled quantile says:
on SARS-CoV-2 that rule flagged 8.1% of the held-out block's slices. The pass rate is therefore chosen
by leave-one-group-out on validation: the smallest rate (from the 95% target up) whose threshold,
computed without a group, flags at most 5% of that group's slices, pooled over all groups. Groups are
the manifest's patients; with fewer than ``MIN_GROUPS`` of them each is cut into runs of consecutive
rows (consecutive rows of one patient are usually consecutive slices of one scan).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from covidct.errors import InputError
from covidct.evaluate.bootstrap import MIN_GROUPS, resampling_groups
from covidct.infer.engines import InferenceEngine
from covidct.model.ood import (
    DEFAULT_PASS_RATE,
    OodDetector,
    threshold_passing,
    with_threshold,
)
from covidct.preprocess.transforms import Preprocessing

MAX_PASS_RATE = 0.995  # never the validation maximum: one odd slice would set it
PASS_RATE_STEP = 0.005


@dataclass(frozen=True)
class OodFit:
    """A fitted detector, the facts the model card records about its fit, and the validation scores
    it was thresholded on."""

    detector: OodDetector
    facts: dict
    val_scores: np.ndarray


def fit_ood_guard(
    engine: InferenceEngine,
    *,
    train: tuple[torch.Tensor, torch.Tensor],
    val_features: np.ndarray,
    val_groups: Sequence[str | None],
    preprocessing: Preprocessing,
    tta_hflip: bool,
    batch_size: int = 32,
    pass_rate: float = DEFAULT_PASS_RATE,
) -> OodFit:
    """Fit the detector on the features of ``train`` (slices, labels); threshold it so ``pass_rate`` of a
    new patient's slices pass.

    The cost is one pass of ``engine`` (the trained network, as inference runs it) over the training
    slices (with ``tta_hflip`` each slice and its mirror, as inference does). ``val_features`` are
    the ones calibration computed. The threshold comes from validation slices, which the detector's
    means and covariance never saw (training features sit much closer to them), so the pass rate
    carries over to new CT slices of the same kind; ``val_groups`` (one patient id or None per validation
    slice) set how much above ``pass_rate`` the validation quantile must be (module docstring).
    """
    options = {"preprocessing": preprocessing, "batch_size": batch_size, "tta_hflip": tta_hflip}
    train_features, _ = engine.features_and_logits(train[0], **options)
    detector = fit_detector(train_features, train[1])
    fitted = threshold_on_validation(detector, detector.scores(val_features), val_groups, pass_rate=pass_rate)
    return dataclasses.replace(fitted, facts={**fitted.facts, "n_train": len(train_features)})


def fit_detector(features: np.ndarray, labels: np.ndarray | torch.Tensor) -> OodDetector:
    """Fit class means and a shared shrinkage precision to (N, D) training ``features``, (N,) ``labels``.

    Ledoit-Wolf shrinkage keeps the 2048 x 2048 covariance invertible and well conditioned with a few
    hundred slices. The threshold is left at infinity until ``with_threshold`` sets it on validation data.

    Raises:
        InputError: fewer than two feature vectors, or ``labels`` not one per feature vector.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) < 2 or y.shape != (len(x),):
        raise InputError(
            "the OOD detector needs (N, D) features with N >= 2 and one label each; "
            f"got features {x.shape} and labels {y.shape}"
        )
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return OodDetector(means, precision)


def threshold_on_validation(
    detector: OodDetector,
    val_scores: np.ndarray,
    val_groups: Sequence[str | None],
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
) -> OodFit:
    """``detector`` with the threshold the group-calibrated validation quantile gives, and the
    facts the card records."""
    groups = calibration_groups(val_groups)
    quantile, new_group_flag_rate = group_calibrated_pass_rate(val_scores, groups, target=pass_rate)
    detector = with_threshold(detector, val_scores, pass_rate=quantile)
    facts = {
        "target_pass_rate": pass_rate,
        "threshold_rule": (
            "leave-one-group-out on validation: the smallest validation quantile "
            "whose threshold flags at most 1 - target of a left-out group"
        ),
        "val_quantile": quantile,
        "val_pass_rate": round(float(np.mean(detector.is_in_distribution(val_scores))), 4),
        "estimated_new_group_flag_rate": round(new_group_flag_rate, 4),
        "n_val_groups": len(np.unique(groups)),
        "n_val": len(val_scores),
    }
    return OodFit(detector, facts, np.asarray(val_scores))


def calibration_groups(groups: Sequence[str | None]) -> np.ndarray:
    """(N,) int group of each validation slice for the leave-one-group-out estimate.

    The manifest's patients, a slice without a patient id being a group of its own; with fewer than
    ``MIN_GROUPS`` patients, runs of consecutive rows (``evaluate.bootstrap.resampling_groups``).
    """
    return resampling_groups(
        [
            f"row-{index}" if group is None or str(group) == "" else str(group)
            for index, group in enumerate(groups)
        ],
        MIN_GROUPS,
    )


def group_calibrated_pass_rate(
    scores: np.ndarray, groups: np.ndarray, *, target: float
) -> tuple[float, float]:
    """The smallest validation quantile (``target`` up to ``MAX_PASS_RATE``) whose left-out-group flag rate
    is at most ``1 - target``.

    Returns:
        (quantile, the leave-one-group-out flag rate at it). With fewer than two groups nothing can be
        left out: ``target`` and a rate of ``1 - target`` come back.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(np.unique(groups)) < 2:
        return target, 1.0 - target
    rate = 1.0
    for quantile in np.arange(target, max(target, MAX_PASS_RATE) + PASS_RATE_STEP / 2, PASS_RATE_STEP):
        rate = left_out_group_flag_rate(scores, groups, float(quantile))
        if rate <= 1.0 - target + 1e-12:
            return round(float(quantile), 4), rate
    return max(target, MAX_PASS_RATE), rate


def left_out_group_flag_rate(scores: np.ndarray, groups: np.ndarray, quantile: float) -> float:
    """Share of slices flagged when each group is scored against the ``quantile`` threshold of
    the other groups' scores."""
    flagged = 0
    for group in np.unique(groups):
        held_out = groups == group
        flagged += int(np.sum(scores[held_out] > threshold_passing(scores[~held_out], quantile)))
    return flagged / len(scores)
