"""Does a test set look like the training data? A flag for the site shift that makes metrics not transfer.

Cross-site failure is the rule for COVID CT models (a model trained on one public dataset scored
0.41 ROC-AUC on another), and it shows before any label is known: the slices, as the network sees
them after preprocessing, are brighter or darker, hold more or less air (field of view), or sit
further from the training features (OOD score). Training records the distribution of each such
statistic in the model card (``reference_statistics``); evaluation measures the test set the same
way and compares (``detect_site_shift``).

The rule: for each statistic, the Kolmogorov-Smirnov distance D between the test values and the
training distribution (rebuilt from its stored quantiles); a likely site shift when any D exceeds
both ``SHIFT_KS_THRESHOLD`` (an effect size: 0.35 means that for some value, the share of slices
below it differs by 35 points) and the two-sample KS critical value at the 1% level,
1.63 * sqrt((n + m) / (n * m)) (so a handful of test slices is not flagged for sampling noise alone:
0.58 for 12 test slices against 24 training ones, 0.12 for 200 against 2000). Rebuilding the
training CDF from 41 quantiles changes D by at most 0.025.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Between the largest in-domain (0.22) and the smallest cross-site (0.51) distance on the shared datasets'
# validation splits (BENCHMARKS.md, "Site-shift flag threshold").
SHIFT_KS_THRESHOLD = 0.35
_KS_CRITICAL_COEFFICIENT_1PCT = 1.63
QUANTILE_LEVELS = tuple(round(level, 3) for level in np.linspace(0.0, 1.0, 41))
DARK_LEVEL = 0.1
_CHUNK = 256

STATISTIC_DESCRIPTIONS = {
    "mean_intensity": "mean intensity of the preprocessed slice",
    "intensity_std": "intensity spread (standard deviation) of the preprocessed slice",
    "dark_fraction": (
        f"share of pixels darker than {DARK_LEVEL} (air and aerated lung: field of view and window)"
    ),
    "ood_score": (
        "out-of-distribution score (distance to the training features; reference: validation slices)"
    ),
}


def slice_statistics(slices: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) float64 per-slice statistics of (N, S, S) slices in [0, 1], in chunks to bound memory.

    ``slices``: float16 or float32, numpy or a CPU tensor.
    """
    parts: dict[str, list[np.ndarray]] = {"mean_intensity": [], "intensity_std": [], "dark_fraction": []}
    for start in range(0, len(slices), _CHUNK):
        chunk = np.asarray(slices[start : start + _CHUNK], dtype=np.float32)
        chunk = chunk.reshape(len(chunk), -1)
        parts["mean_intensity"].append(chunk.mean(1))
        parts["intensity_std"].append(chunk.std(1, ddof=1))  # the sample std, as recorded in cards
        parts["dark_fraction"].append((chunk < DARK_LEVEL).mean(1, dtype=np.float32))
    return {
        name: np.concatenate(values).astype(np.float64) if values else np.empty(0)
        for name, values in parts.items()
    }


def reference_statistics(train_slices: np.ndarray, val_ood_scores: np.ndarray | None) -> dict:
    """The model card's record of the training data: quantiles of each statistic (and of
    validation OOD scores)."""
    values = slice_statistics(train_slices)
    if val_ood_scores is not None:
        values["ood_score"] = np.asarray(val_ood_scores, dtype=np.float64)
    return {
        "rule": (
            "a test set is flagged when, for any statistic, its Kolmogorov-Smirnov distance "
            f"to these quantiles exceeds both {SHIFT_KS_THRESHOLD} and the 1% critical value"
        ),
        "quantile_levels": list(QUANTILE_LEVELS),
        "quantiles": {
            name: [round(float(q), 5) for q in np.quantile(v, QUANTILE_LEVELS)] for name, v in values.items()
        },
        "n": {name: len(v) for name, v in values.items()},
    }


@dataclass(frozen=True)
class SiteShift:
    """The comparison of a test set with the training data.

    Attributes:
        ks_distance: statistic name -> KS distance D in [0, 1] (only the statistics both sides have).
        threshold: statistic name -> the D above which it is flagged (see the module docstring).
    """

    ks_distance: dict[str, float]
    threshold: dict[str, float]

    @property
    def flagged(self) -> tuple[str, ...]:
        """The statistics whose distance exceeds their threshold."""
        return tuple(name for name, distance in self.ks_distance.items() if distance > self.threshold[name])

    @property
    def is_shifted(self) -> bool:
        return bool(self.flagged)

    def to_json_dict(self) -> dict:
        """The ``site_shift`` entry of metrics.json."""
        return {
            "likely_shift": self.is_shifted,
            "ks_distance": self.ks_distance,
            "flagged": list(self.flagged),
            "threshold": self.threshold,
        }

    def note(self) -> str:
        """One sentence for the report, next to the metrics."""
        if not self.is_shifted:
            return "No site shift detected: every statistic is within its KS threshold of the training data."
        found = "; ".join(
            f"{STATISTIC_DESCRIPTIONS[name]} (KS distance {self.ks_distance[name]:.2f})"
            for name in self.flagged
        )
        return (
            f"Likely site shift: these test images differ strongly from the training data in {found}. "
            "Metrics measured on the training site may not hold here; read these as an external validation."
        )


def detect_site_shift(reference: dict, test_statistics: dict[str, np.ndarray]) -> SiteShift:
    """Compare ``test_statistics`` (name -> (N,) values, as ``slice_statistics`` gives plus ``ood_score``)
    with a card's reference."""
    levels = np.asarray(reference["quantile_levels"], dtype=np.float64)
    distances, thresholds = {}, {}
    for name, quantiles in reference["quantiles"].items():
        values = test_statistics.get(name)
        if values is not None and len(values) > 0:
            distances[name] = round(
                ks_distance_to_quantiles(
                    np.asarray(values, dtype=np.float64), np.asarray(quantiles, dtype=np.float64), levels
                ),
                4,
            )
            n, m = len(values), reference["n"][name]
            thresholds[name] = round(
                max(SHIFT_KS_THRESHOLD, _KS_CRITICAL_COEFFICIENT_1PCT * np.sqrt((n + m) / (n * m))), 4
            )
    return SiteShift(distances, thresholds)


def ks_distance_to_quantiles(values: np.ndarray, quantiles: np.ndarray, levels: np.ndarray) -> float:
    """max |F_test - F_ref| over the test values and the quantiles, both CDFs taken right-continuous.

    F_test is the empirical CDF of ``values``; F_ref interpolates (``quantiles``, ``levels``), where a
    value repeated over several quantiles (an atom: many slices with no dark pixel at all) takes the
    highest of their levels, as a CDF does.
    """
    reversed_unique, last = np.unique(quantiles[::-1], return_index=True)
    atom_levels = levels[::-1][last]
    points = np.union1d(values, quantiles)
    empirical = np.searchsorted(np.sort(values), points, side="right") / len(values)
    reference = np.interp(points, reversed_unique, atom_levels, left=0.0, right=1.0)
    return float(np.max(np.abs(empirical - reference)))
