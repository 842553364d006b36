"""An evaluation's numbers: slice-level and patient-level metrics with bootstrap CIs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covidct.evaluate.aggregate import aggregate_by_group
from covidct.evaluate.bootstrap import BootstrapResult, bootstrap_ci
from covidct.evaluate.metrics import check_threshold
from covidct.model.decision import Aggregate, parse_aggregate


@dataclass(frozen=True)
class EvaluationResult:
    """Slice-level and (with patient ids) patient-level metrics with bootstrap CIs.

    Attributes:
        threshold: decision threshold; ``prob >= threshold`` is called positive.
        slice_level: metrics over slices; CIs resample patients when patient ids were given.
        patient_level: metrics over aggregated patient scores, or None without patient ids.
        aggregate: rule that turned slice probabilities into patient probabilities.
        topk_fraction: fraction of slices averaged by ``Aggregate.TOPK``.
    """

    threshold: float
    slice_level: BootstrapResult
    patient_level: BootstrapResult | None
    aggregate: Aggregate
    topk_fraction: float

    @property
    def has_patient_ids(self) -> bool:
        """Whether patient ids were given, and so whether there is a patient level."""
        return self.patient_level is not None

    def to_json_dict(self) -> dict[str, object]:
        """Return the fixed ``metrics.json`` shape: slice_level, patient_level (or None), threshold.

        Each level is ``{"n": int, metric: {"value": float|None, "ci95": [lo, hi]}}`` for the metrics of
        ``METRIC_NAMES``; undefined values are None (JSON null). Dropped-resample counts and the
        aggregation rule are deliberately left out: the shape is fixed, they go in ``report.html``.
        """
        return {
            "slice_level": self.slice_level.to_json_dict(),
            "patient_level": None if self.patient_level is None else self.patient_level.to_json_dict(),
            "threshold": self.threshold,
        }


def evaluation_metrics(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    *,
    groups: Sequence[str] | None = None,
    aggregate: Aggregate = Aggregate.MEAN,
    n_resamples: int = 1000,
    seed: int = 0,
    topk_fraction: float = 0.25,
) -> EvaluationResult:
    """Return slice-level and patient-level metrics with 95% bootstrap CIs.

    Slice-level CIs resample patients when ``groups`` is given (slices of one patient are correlated)
    and slices otherwise; patient-level metrics score one aggregated probability per patient and
    resample patients. Without ``groups`` there is no patient level.

    Args:
        y_true: (N,) slice labels in {0, 1}.
        prob: (N,) slice probabilities of the positive class in [0, 1].
        threshold: decision threshold in [0, 1], applied to slices and to aggregated patient scores.
        groups: (N,) patient id per slice, or None.
        aggregate: how slice probabilities become a patient probability.
        n_resamples: bootstrap resamples per level.
        seed: bootstrap seed.
        topk_fraction: fraction of slices averaged by ``Aggregate.TOPK``.

    Raises:
        InputError: invalid labels, probabilities or patient ids, or a patient with both labels.
        OptionError: invalid threshold, aggregate rule, ``topk_fraction`` or ``n_resamples``.
    """
    rule = parse_aggregate(aggregate)
    threshold = check_threshold(threshold)
    slice_level = bootstrap_ci(y_true, prob, threshold, groups=groups, n_resamples=n_resamples, seed=seed)
    patient_level = None
    if groups is not None:
        patients = aggregate_by_group(prob, y_true, groups, rule, topk_fraction=topk_fraction)
        patient_level = bootstrap_ci(
            patients.labels, patients.prob, threshold, n_resamples=n_resamples, seed=seed
        )
    return EvaluationResult(threshold, slice_level, patient_level, rule, float(topk_fraction))
