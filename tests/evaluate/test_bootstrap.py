"""Bootstrap intervals: coverage of the point estimate, patient resampling, dropped resamples, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidct.errors import InputError, OptionError
from covidct.evaluate import bootstrap
from covidct.evaluate.bootstrap import MIN_GROUPS, bootstrap_ci, resampling_groups
from covidct.evaluate.metrics import METRIC_NAMES, binary_metrics


@pytest.fixture(scope="module")
def separated():
    """600 samples, half positive, scores overlapping a little (AUC about 0.98)."""
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 300)
    prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.12, y.size), 0, 1)
    return y, prob


def test_interval_contains_the_point_estimate_for_a_large_separated_sample(separated):
    y, prob = separated
    result = bootstrap_ci(y, prob, 0.5, n_resamples=500, seed=0)
    point = binary_metrics(y, prob, 0.5)
    for name in METRIC_NAMES:
        entry = result.estimates[name]
        low, high = entry["ci95"]
        assert entry["value"] == point[name]
        assert low <= entry["value"] <= high, name
        assert high - low < 0.15, name
    assert result.estimates["auc"]["ci95"][0] < result.estimates["auc"]["ci95"][1]
    assert result.n == 600 and result.n_units == 600 and not result.is_grouped
    assert result.n_dropped == dict.fromkeys(METRIC_NAMES, 0)


def test_higher_confidence_gives_a_wider_interval(separated):
    y, prob = separated
    narrow = bootstrap_ci(y, prob, 0.5, n_resamples=300, confidence=0.5).estimates["auc"]["ci95"]
    wide = bootstrap_ci(y, prob, 0.5, n_resamples=300, confidence=0.99).estimates["auc"]["ci95"]
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_patient_resampling_keeps_a_patients_slices_together():
    # Three patients of 4 slices: P1 positive and correct, N1 negative but scored 0.8 (wrong), N2
    # negative and correct. Drawing whole patients, accuracy is 0, 1/3, 2/3 or 1, and P(0) = 1/27 and
    # P(1) = 8/27 both exceed 2.5%, so the 95% interval is exactly [0, 1]. Slices drawn one by one
    # would mix the patients and give a much narrower interval around 2/3.
    y = np.repeat([1, 0, 0], 4)
    prob = np.repeat([0.9, 0.8, 0.1], 4)
    groups = np.repeat(["P1", "N1", "N2"], 4)
    by_patient = bootstrap_ci(y, prob, 0.5, groups=groups, n_resamples=1000, seed=3, min_groups=1)
    by_slice = bootstrap_ci(y, prob, 0.5, n_resamples=1000, seed=3)
    assert by_patient.estimates["accuracy"]["ci95"] == [0.0, 1.0]
    assert by_patient.n == 12 and by_patient.n_units == 3 and by_patient.is_grouped
    low, high = by_slice.estimates["accuracy"]["ci95"]
    assert 0.25 < low and high < 1.0


def test_one_patient_per_class_reports_dropped_resamples():
    # Two patients of 10 slices each: a patient resample is one class (AUC undefined) with
    # probability 1/2. Drawn slice by slice, one class in 20 draws is a ~2e-6 event.
    y = np.repeat([1, 0], 10)
    prob = np.repeat([0.8, 0.3], 10)
    groups = ["pos"] * 10 + ["neg"] * 10
    result = bootstrap_ci(y, prob, 0.5, groups=groups, n_resamples=400, seed=0, min_groups=1)
    assert 150 < result.n_dropped["auc"] < 250
    assert result.n_dropped["sensitivity"] + result.n_dropped["specificity"] == result.n_dropped["auc"]
    assert result.n_dropped["accuracy"] == 0 and result.n_dropped["brier"] == 0
    assert result.estimates["auc"]["ci95"] == [1.0, 1.0]
    assert bootstrap_ci(y, prob, 0.5, n_resamples=400, seed=0).n_dropped["auc"] == 0


def test_too_few_patients_are_resampled_as_runs_of_consecutive_slices():
    # SARS-CoV-2's test block: one group id per class, 120 slices each, scored with some overlap. Two
    # groups give every defined AUC resample the same value (both groups drawn): a point, not an interval.
    rng = np.random.default_rng(0)
    y = np.repeat([1, 0], 120)
    prob = np.clip(np.concatenate([rng.normal(0.6, 0.2, 120), rng.normal(0.4, 0.2, 120)]), 0, 1)
    groups = ["covid-block9"] * 120 + ["normal-block9"] * 120

    two_groups = bootstrap_ci(y, prob, 0.5, groups=groups, n_resamples=400, seed=0, min_groups=1)
    runs = bootstrap_ci(y, prob, 0.5, groups=groups, n_resamples=400, seed=0)

    low, high = two_groups.estimates["auc"]["ci95"]
    assert low == high
    low, high = runs.estimates["auc"]["ci95"]
    assert low < runs.estimates["auc"]["value"] < high
    assert runs.is_grouped and runs.runs_from_groups == 2 and runs.n_units == MIN_GROUPS


def test_enough_patients_are_resampled_as_they_are():
    y = np.repeat([1, 0], 60)
    groups = [f"p{i // 6}" for i in range(120)]  # 20 patients of 6 slices

    result = bootstrap_ci(y, np.linspace(0, 1, 120), 0.5, groups=groups, n_resamples=50)

    assert result.n_units == 20 and result.runs_from_groups == 0


def test_runs_never_mix_two_patients():
    names = ["b"] * 7 + ["a"] * 5

    groups = resampling_groups(names, 6)

    assert len(np.unique(groups)) == 6 and groups.max() == 5
    assert set(groups[:7]).isdisjoint(groups[7:])
    assert np.all(np.diff(groups[:7]) >= 0) and np.all(np.diff(groups[7:]) >= 0)


def test_metric_undefined_everywhere_gives_nan_interval_and_all_dropped():
    result = bootstrap_ci([0, 0, 0], [0.1, 0.6, 0.2], 0.5, n_resamples=50)
    assert math.isnan(result.estimates["auc"]["value"])
    assert all(math.isnan(v) for v in result.estimates["auc"]["ci95"])
    assert result.n_dropped["auc"] == 50
    assert result.to_json_dict()["auc"] == {"value": None, "ci95": [None, None]}


def test_same_seed_same_intervals_and_other_seed_differs(separated):
    y, prob = separated
    groups = [f"P{i // 6}" for i in range(y.size)]
    first = bootstrap_ci(y, prob, 0.5, groups=groups, n_resamples=200, seed=11)
    again = bootstrap_ci(y, prob, 0.5, groups=groups, n_resamples=200, seed=11)
    other = bootstrap_ci(y, prob, 0.5, groups=groups, n_resamples=200, seed=12)
    assert first == again
    assert first.estimates["auc"]["ci95"] != other.estimates["auc"]["ci95"]


def test_resamples_split_over_many_chunks_keep_their_statistics(monkeypatch, separated):
    # Large test sets are resampled in chunks to bound memory; force one resample per chunk.
    monkeypatch.setattr(bootstrap, "_CHUNK_CELLS", 1)
    y = np.repeat([1, 0], 10)
    prob = np.repeat([0.8, 0.3], 10)
    result = bootstrap_ci(
        y, prob, 0.5, groups=["pos"] * 10 + ["neg"] * 10, n_resamples=400, seed=0, min_groups=1
    )
    assert result.n_resamples == 400
    assert 150 < result.n_dropped["auc"] < 250
    y, prob = separated
    chunked = bootstrap_ci(y, prob, 0.5, n_resamples=200, seed=0).estimates["auc"]
    assert chunked["ci95"][0] < chunked["value"] < chunked["ci95"][1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"n_resamples": 0}, "n_resamples must be a positive integer; got 0", id="zero-resamples"
        ),
        pytest.param(
            {"confidence": 1.0}, r"confidence must be in \(0, 1\), e.g. 0.95; got 1.0", id="confidence-one"
        ),
    ],
)
def test_invalid_options_raise_option_error(options, message):
    with pytest.raises(OptionError, match=message):
        bootstrap_ci([0, 1], [0.2, 0.8], 0.5, **options)


def test_group_count_must_match_samples():
    with pytest.raises(InputError, match="1 patient ids but 2 slices"):
        bootstrap_ci([0, 1], [0.2, 0.8], 0.5, groups=["P"])
