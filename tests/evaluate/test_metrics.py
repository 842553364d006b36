"""Metrics against hand-computed values, their undefined cases, and the vectorised twin."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from covidct.errors import InputError, OptionError
from covidct.evaluate.metrics import (
    METRIC_NAMES,
    binary_metrics,
    confusion,
    ece_sampling_floor,
    expected_calibration_error,
    reliability_bins,
    weighted_binary_metrics,
)

# Ten slices, 4 positive. At threshold 0.5: TP = 3 (0.9, 0.8, 0.6), FN = 1 (0.3),
# FP = 2 (0.7, 0.55), TN = 4. Every probability falls in its own ECE bin.
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.4, 0.2, 0.1, 0.05])

HAND_COMPUTED = {
    "accuracy": 7 / 10,
    "sensitivity": 3 / 4,
    "specificity": 4 / 6,
    "ppv": 3 / 5,
    "npv": 4 / 5,
    "f1": 2 * 3 / (2 * 3 + 2 + 1),
    # Positive-negative pairs ranked correctly: 6 + 6 + 5 + 3 of 4 * 6.
    "auc": 20 / 24,
    # Precision at each positive, from the top: 1/1, 2/2, 3/4, 4/7.
    "pr_auc": (1 + 1 + 3 / 4 + 4 / 7) / 4,
    # (0.01 + 0.04 + 0.16 + 0.49) + (0.49 + 0.3025 + 0.16 + 0.04 + 0.01 + 0.0025), over 10.
    "brier": 1.705 / 10,
    # One sample per bin, so ECE is the mean |y - p|: (1.4 + 2.0) / 10.
    "ece": 0.34,
}


def test_metric_names_are_the_documented_ones():
    assert set(METRIC_NAMES) == {
        "auc",
        "accuracy",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "pr_auc",
        "brier",
        "ece",
    }
    assert len(METRIC_NAMES) == 10


def test_binary_metrics_match_hand_computed_values():
    metrics = binary_metrics(Y10, P10, 0.5)
    assert set(metrics) == set(METRIC_NAMES)
    for name, expected in HAND_COMPUTED.items():
        assert metrics[name] == pytest.approx(expected, abs=1e-12), name


def test_confusion_is_tn_fp_fn_tp():
    np.testing.assert_array_equal(confusion(Y10, P10, 0.5), [[4, 2], [1, 3]])


def test_probability_equal_to_threshold_is_called_positive():
    np.testing.assert_array_equal(confusion([1, 0], [0.5, 0.5], 0.5), [[0, 1], [0, 1]])


UNDEFINED_CASES = [
    pytest.param([0, 0, 0, 0], [0.1, 0.2, 0.7, 0.9], {"auc", "sensitivity", "pr_auc"}, id="negatives-only"),
    pytest.param([1, 1, 1], [0.2, 0.6, 0.9], {"auc", "specificity"}, id="positives-only"),
    pytest.param([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], {"ppv"}, id="no-predicted-positive"),
    pytest.param([0, 1, 0, 1], [0.6, 0.7, 0.8, 0.9], {"npv"}, id="no-predicted-negative"),
    pytest.param([0, 0], [0.1, 0.2], {"auc", "sensitivity", "pr_auc", "ppv", "f1"}, id="true-negatives-only"),
]


@pytest.mark.parametrize(("y", "p", "undefined"), UNDEFINED_CASES)
def test_undefined_metrics_are_nan_without_warnings(y, p, undefined):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = binary_metrics(np.array(y), np.array(p), 0.5)
    assert {name for name, value in metrics.items() if math.isnan(value)} == undefined


def test_f1_is_zero_not_nan_when_only_false_positives():
    assert binary_metrics([0, 0], [0.9, 0.1], 0.5)["f1"] == 0.0


def test_ece_is_zero_for_perfectly_calibrated_bins():
    # Bin [0.2, 0.3): 4 slices at 0.25, 1 positive. Bin [0.7, 0.8): 4 slices at 0.75, 3 positive.
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_overconfident_model():
    # All slices at 0.9 but only half positive: one bin, gap |0.5 - 0.9| = 0.4.
    assert expected_calibration_error([1, 0] * 5, [0.9] * 10) == pytest.approx(0.4)


def test_ece_sampling_floor_is_what_calibrated_labels_show_and_shrinks_with_more_slices():
    rng = np.random.default_rng(1)
    small, large = rng.uniform(0, 1, 200), rng.uniform(0, 1, 20_000)
    calibrated = [
        expected_calibration_error((rng.random(200) < small).astype(int), small) for _ in range(300)
    ]

    floor = ece_sampling_floor(small)

    assert floor == pytest.approx(np.mean(calibrated), abs=0.006)
    assert 0.04 < floor < 0.09  # 200 slices, 10 bins: a calibrated model cannot show ECE <= 0.04 on average
    assert ece_sampling_floor(large, n_draws=20) < 0.015


def test_ece_weights_bins_by_their_size():
    # Bin [0.1, 0.2): 3 slices at 0.1, none positive (gap 0.1). Bin [0.9, 1]: 1 slice
    # at 1.0, positive (gap 0).
    assert expected_calibration_error([0, 0, 0, 1], [0.1, 0.1, 0.1, 1.0]) == pytest.approx(0.075)


def test_reliability_bins_put_one_in_the_last_bin_and_leave_empty_bins_nan():
    bins = reliability_bins([0, 1, 1], [0.3, 1.0, 0.95])
    np.testing.assert_array_equal(bins.count, [0, 0, 0, 1, 0, 0, 0, 0, 0, 2])
    assert bins.mean_prob[9] == pytest.approx(0.975)
    assert bins.frac_positive[3] == 0.0
    assert math.isnan(bins.mean_prob[0]) and math.isnan(bins.frac_positive[5])


def test_weighted_metrics_equal_binary_metrics_on_repeated_samples():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60), 1)  # rounding creates ties, the hard case for AUC and AP
    weights = rng.integers(0, 3, size=(25, 60))
    weights[0] = 0
    weights[0, y == 0] = 1  # a resample without positives: AUC, sensitivity, PR-AUC undefined
    batched = weighted_binary_metrics(y, p, 0.5, weights)
    for r in range(weights.shape[0]):
        single = binary_metrics(np.repeat(y, weights[r]), np.repeat(p, weights[r]), 0.5)
        for name in METRIC_NAMES:
            np.testing.assert_allclose(
                batched[name][r], single[name], rtol=1e-12, atol=1e-12, err_msg=f"{name}, row {r}"
            )
    assert math.isnan(batched["auc"][0])


INVALID_INPUTS = [
    pytest.param([], [], InputError, "no samples", id="empty"),
    pytest.param([0, 1], [0.5], InputError, "2 labels but 1 probabilities", id="length-mismatch"),
    pytest.param([0, 2], [0.5, 0.5], InputError, r"labels must be 0 .* found \[2\]", id="bad-label"),
    pytest.param(
        [0, 1], [0.5, 1.5], InputError, "in \\[0, 1\\].*Pass probabilities, not logits", id="prob-above-one"
    ),
    pytest.param([0, 1], [0.5, np.nan], InputError, "1 not finite", id="prob-nan"),
]


@pytest.mark.parametrize(("y", "p", "error", "message"), INVALID_INPUTS)
def test_invalid_inputs_raise_input_error(y, p, error, message):
    with pytest.raises(error, match=message):
        binary_metrics(y, p, 0.5)


def test_threshold_outside_unit_interval_raises_option_error():
    with pytest.raises(OptionError, match=r"threshold must be in \[0, 1\]; got 1.2"):
        binary_metrics([0, 1], [0.2, 0.8], 1.2)
