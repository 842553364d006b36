"""Bootstrap confidence intervals for every metric, resampling patients when patient ids are known."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covidct.errors import OptionError
from covidct.evaluate.aggregate import check_patient_ids
from covidct.evaluate.metrics import (
    METRIC_NAMES,
    binary_metrics,
    check_binary_inputs,
    check_threshold,
    weighted_binary_metrics,
)

# With fewer groups than this a group bootstrap degenerates (two patients, one per class, give every AUC
# resample the same value), so each group is cut into runs of consecutive rows (``resampling_groups``).
MIN_GROUPS = 10
# Resamples are processed in chunks of at most this many (resample, sample) cells, so memory stays near
# 100 MB whatever the test-set size (about ten float64 arrays of this size are alive at once).
_CHUNK_CELLS = 1_000_000


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates and percentile bootstrap intervals for every metric of ``METRIC_NAMES``.

    Attributes:
        n: samples in the point estimate (slices, or patients for patient-level scores).
        estimates: metric -> {"value": point estimate, "ci95": [low, high]}; NaN where undefined. The
            key is "ci95" whatever ``confidence`` was, because ``metrics.json`` fixes it.
        n_dropped: metric -> resamples dropped because the metric was undefined in them (one class
            for AUC, no predicted positives for PPV, ...). The interval uses the remaining resamples.
        n_resamples: resamples drawn.
        n_units: units resampled: groups (patients) when ``is_grouped``, otherwise samples.
        is_grouped: whether whole groups were resampled, keeping each group's samples together.
        confidence: coverage of the interval, e.g. 0.95.
        runs_from_groups: when > 0, there were only this many groups, fewer than ``MIN_GROUPS``, so each was
            cut into runs of consecutive samples and ``n_units`` counts the runs.
    """

    n: int
    estimates: dict[str, dict[str, float | list[float]]]
    n_dropped: dict[str, int]
    n_resamples: int
    n_units: int
    is_grouped: bool
    confidence: float
    runs_from_groups: int = 0

    def to_json_dict(self) -> dict[str, object]:
        """Return ``{"n": n, metric: {"value": v, "ci95": [lo, hi]}, ...}`` with NaN written as None.

        JSON has no NaN; None (null) is how an undefined metric reaches other tools.
        """
        out: dict[str, object] = {"n": self.n}
        for name in METRIC_NAMES:
            entry = self.estimates[name]
            out[name] = {
                "value": _finite_or_none(entry["value"]),
                "ci95": [_finite_or_none(v) for v in entry["ci95"]],
            }
        return out


def bootstrap_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    *,
    groups: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_groups: int = MIN_GROUPS,
) -> BootstrapResult:
    """Return point estimates of every metric with percentile bootstrap confidence intervals.

    With ``groups``, a resample draws groups (patients) with replacement and takes all their samples:
    slices of one patient are correlated, and resampling them one by one gives intervals that are too
    narrow. Without ``groups`` samples are drawn one by one. A resample in which a metric is undefined
    (NaN) is dropped for that metric only, and the drop is counted in ``n_dropped``.

    Args:
        y_true: (N,) labels in {0, 1}.
        prob: (N,) probabilities of the positive class in [0, 1].
        threshold: decision threshold in [0, 1]; ``prob >= threshold`` is called positive.
        groups: (N,) group (patient) id per sample, or None to resample samples.
        n_resamples: number of bootstrap resamples, at least 1.
        seed: seed of the resampling; the same inputs and seed give the same intervals.
        confidence: interval coverage in (0, 1).
        min_groups: with fewer named groups than this, each is cut into runs of consecutive samples
            (``resampling_groups``); 1 resamples the named groups however few.

    Raises:
        InputError: invalid labels, probabilities or group ids (see ``check_binary_inputs``).
        OptionError: threshold, ``n_resamples`` or ``confidence`` out of range.
    """
    y, p = check_binary_inputs(y_true, prob)
    threshold = check_threshold(threshold)
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise OptionError(f"n_resamples must be a positive integer; got {n_resamples!r}.")
    if not 0.0 < confidence < 1.0:
        raise OptionError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}.")
    runs_from_groups = 0
    if groups is None:
        unit_of_sample = np.arange(y.size)
    else:
        names = check_patient_ids(groups, y.size)
        unit_of_sample = resampling_groups(names, min_groups)
        n_named = len(np.unique(names))
        runs_from_groups = n_named if n_named < min_groups else 0
    n_units = int(unit_of_sample.max()) + 1

    resampled = _resampled_metrics(y, p, threshold, unit_of_sample, n_units, int(n_resamples), seed)
    point = binary_metrics(y, p, threshold)
    estimates, n_dropped = {}, {}
    for name in METRIC_NAMES:
        values = resampled[name][~np.isnan(resampled[name])]
        n_dropped[name] = int(n_resamples - values.size)
        estimates[name] = {"value": point[name], "ci95": _percentile_interval(values, confidence)}
    return BootstrapResult(
        n=int(y.size),
        estimates=estimates,
        n_dropped=n_dropped,
        n_resamples=int(n_resamples),
        n_units=n_units,
        is_grouped=groups is not None,
        confidence=float(confidence),
        runs_from_groups=runs_from_groups,
    )


def resampling_groups(names: Sequence[str], min_groups: int = MIN_GROUPS) -> np.ndarray:
    """(N,) int group of each sample: the named groups when there are at least ``min_groups`` of them.

    Otherwise each named group's rows are cut into the same number of runs of consecutive rows, enough to
    make at least ``min_groups`` groups in all: consecutive rows of one patient are usually consecutive slices
    of one scan, so a run stands in for a scan (SARS-CoV-2 has no patient ids, only blocks of scans). Runs of
    one patient are still correlated, so intervals from them are narrower than patient intervals would be.
    """
    _, ids = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    n_groups = int(ids.max()) + 1 if len(ids) else 0
    if n_groups >= min_groups:
        return ids
    runs_per_group = -(-min_groups // max(n_groups, 1))
    out = np.empty(len(ids), dtype=np.int64)
    for group in range(n_groups):
        rows = np.flatnonzero(ids == group)
        for run, chunk in enumerate(np.array_split(rows, min(runs_per_group, len(rows)))):
            out[chunk] = group * runs_per_group + run
    _, compact = np.unique(out, return_inverse=True)
    return compact


def _resampled_metrics(y, p, threshold, unit_of_sample, n_units, n_resamples, seed) -> dict[str, np.ndarray]:
    """Metric -> (n_resamples,) values; each resample draws ``n_units`` units with replacement.

    A resample is represented by how often each unit was drawn, broadcast to that unit's samples, so
    all of a unit's samples enter a resample together and ``weighted_binary_metrics`` scores a whole
    chunk of resamples at once.
    """
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_CELLS // max(y.size, n_units))
    chunks = []
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        draws = rng.integers(0, n_units, size=(rows, n_units))
        # Offsetting row r's draws by r * n_units lets one bincount count every row at once.
        flat = (draws + (np.arange(rows) * n_units)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * n_units).reshape(rows, n_units)
        chunks.append(weighted_binary_metrics(y, p, threshold, counts[:, unit_of_sample]))
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in METRIC_NAMES}


def _percentile_interval(values: np.ndarray, confidence: float) -> list[float]:
    """[low, high] percentiles of the defined resample values; [NaN, NaN] when none is defined."""
    if values.size == 0:
        return [math.nan, math.nan]
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite."""
    value = float(value)
    return value if math.isfinite(value) else None
