"""The OOD threshold's pass rate is chosen so that a new patient's slices pass, not only
the validation slices."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.train.ood_fit import (
    MAX_PASS_RATE,
    MIN_GROUPS,
    calibration_groups,
    group_calibrated_pass_rate,
)


def scan_scores(
    rng: np.random.Generator, n_scans: int, slices_per_scan: int, scan_spread: float
) -> tuple[np.ndarray, np.ndarray]:
    """Guard scores where slices of one scan share an offset (``scan_spread`` its standard
    deviation), as real scans do."""
    offsets = rng.normal(0.0, scan_spread, n_scans)
    scores = np.concatenate([60 + offset + rng.gamma(4.0, 3.0, slices_per_scan) for offset in offsets])
    return scores, np.repeat(np.arange(n_scans), slices_per_scan)


def test_on_average_new_scans_are_flagged_at_the_target_rate_where_the_pooled_quantile_flags_more():
    pooled, calibrated = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        scores, groups = scan_scores(rng, n_scans=30, slices_per_scan=10, scan_spread=8.0)
        quantile, rate = group_calibrated_pass_rate(scores, groups, target=0.95)
        assert 0.95 <= quantile <= MAX_PASS_RATE and rate <= 0.05
        new_scores, _ = scan_scores(rng, n_scans=400, slices_per_scan=10, scan_spread=8.0)
        pooled.append(np.mean(new_scores > np.quantile(scores, 0.95, method="higher")))
        calibrated.append(np.mean(new_scores > np.quantile(scores, quantile, method="higher")))

    assert np.mean(calibrated) <= 0.05 < np.mean(pooled)


def test_independent_slices_keep_the_target_quantile():
    rng = np.random.default_rng(1)
    scores, groups = scan_scores(rng, n_scans=40, slices_per_scan=10, scan_spread=0.0)

    quantile, rate = group_calibrated_pass_rate(scores, groups, target=0.95)

    assert quantile <= 0.96 and rate <= 0.05


def test_one_group_cannot_be_left_out_so_the_target_stands():
    assert group_calibrated_pass_rate(np.arange(30.0), np.zeros(30, dtype=int), target=0.95) == (
        0.95,
        pytest.approx(0.05),
    )


def test_patients_are_the_groups_when_there_are_enough():
    patients = [f"p{i // 3}" for i in range(3 * MIN_GROUPS)]

    groups = calibration_groups(patients)

    assert len(np.unique(groups)) == MIN_GROUPS
    assert all(len(set(groups[i : i + 3])) == 1 for i in range(0, len(patients), 3))


def test_few_patients_are_cut_into_runs_of_consecutive_rows():
    patients = ["covid-block8"] * 50 + ["normal-block8"] * 50

    groups = calibration_groups(patients)

    assert len(np.unique(groups)) == MIN_GROUPS
    assert np.all(np.diff(groups[:50]) >= 0) and np.all(np.diff(groups[50:]) >= 0)  # runs, not interleaved
    assert set(groups[:50]).isdisjoint(groups[50:])


def test_slices_without_a_patient_id_are_groups_of_their_own():
    groups = calibration_groups([None, "", None, "a", "a"] + [f"b{i}" for i in range(10)])

    assert len(np.unique(groups)) == 14
    assert groups[3] == groups[4] and len({groups[0], groups[1], groups[2]}) == 3
