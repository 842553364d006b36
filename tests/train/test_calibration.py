"""Bias-corrected temperature scaling and threshold rules, on synthetic validation data with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from covidct.errors import CovidctWarning
from covidct.model.card import calibrated_probabilities
from covidct.train.calibration import TEMPERATURE_BOUNDS, choose_threshold, fit_calibration


def logits_with_temperature(
    true_temperature: float, n: int = 4000, seed: int = 0, true_bias: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / true_temperature + (0, true_bias)): the NLL
    optimum is that T and bias."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 2, generator=generator) * 4
    probabilities = torch.from_numpy(calibrated_probabilities(logits, true_temperature, (0.0, true_bias)))
    labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize(
    "true_temperature", [0.5, 1.0, 2.5], ids=["under-confident", "calibrated", "over-confident"]
)
def test_temperature_recovers_a_known_temperature(true_temperature):
    logits, labels = logits_with_temperature(true_temperature)

    temperature, bias = fit_calibration(logits, labels)

    assert temperature == pytest.approx(true_temperature, rel=0.15)
    assert bias == pytest.approx((0.0, 0.0), abs=0.15)


def test_calibration_recovers_a_shift_toward_one_class():
    """Every logit leans 1.5 toward class 1 (a validation split whose prior differs from
    training's): the bias finds it."""
    logits, labels = logits_with_temperature(2.0, true_bias=1.5)

    temperature, bias = fit_calibration(logits, labels)

    assert temperature == pytest.approx(2.0, rel=0.15)
    assert bias[0] == 0.0 and bias[1] == pytest.approx(1.5, abs=0.2)


def test_temperature_keeps_the_ranking():
    logits, labels = logits_with_temperature(2.0)
    logits = logits.double()  # float32 softmax saturates at 1.0 and would create ties
    temperature, bias = fit_calibration(logits, labels)

    before = torch.softmax(logits, 1)[:, 1]
    after = calibrated_probabilities(logits, temperature, bias)[:, 1]

    assert temperature != pytest.approx(1.0, abs=0.1)
    assert roc_auc_score(labels, after) == pytest.approx(roc_auc_score(labels, before), abs=1e-12)


def test_a_fit_within_the_bounds_gives_no_warning():
    logits, labels = logits_with_temperature(2.5)

    with warnings.catch_warnings():
        warnings.simplefilter("error", CovidctWarning)
        fit_calibration(logits, labels)


@pytest.mark.parametrize(
    ("logits", "bound", "consequence"),
    [
        # confidently wrong every time: the best T is as large as allowed
        (
            torch.tensor([[0.0, 50.0], [50.0, 0.0]] * 10),
            TEMPERATURE_BOUNDS[1],
            "confident answers are mostly wrong",
        ),
        # margins of 0.01 that separate the classes perfectly: the NLL keeps falling as T shrinks
        (torch.tensor([[0.0, -0.01], [0.0, 0.01]] * 10), TEMPERATURE_BOUNDS[0], "int8 export may fail"),
    ],
    ids=["ceiling", "floor"],
)
def test_a_temperature_beyond_its_bounds_is_clamped_with_a_warning(logits, bound, consequence):
    labels = torch.tensor([0, 1] * 10)

    with pytest.warns(CovidctWarning, match=rf"clamped to {bound:g}; .*\(20 images\).*{consequence}"):
        temperature, _ = fit_calibration(logits, labels)

    assert isinstance(temperature, float)
    assert temperature == bound


def test_youden_threshold_separates_a_separable_case():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.05, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8, 0.95])

    threshold, rule = choose_threshold(y_true, prob)

    assert rule == "youden_j"
    assert 0.35 < threshold <= 0.6
    assert np.array_equal(prob >= threshold, y_true.astype(bool))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_target_sensitivity_rule_reaches_the_target_on_the_data(target):
    rng = np.random.default_rng(3)
    y_true = np.repeat([0, 1], 100)
    prob = np.clip(0.35 + 0.3 * y_true + rng.normal(0, 0.15, 200), 0, 1)

    threshold, rule = choose_threshold(y_true, prob, target_sensitivity=target)

    assert rule == f"sensitivity>={target:g}"
    assert np.mean(prob[y_true == 1] >= threshold) >= target


def test_target_sensitivity_rule_picks_the_most_specific_point():
    """ "The highest threshold whose validation sensitivity reaches the target", even on collinear ROC points.

    Tied scores (0.8 and 0.7 are each held by a positive and a negative) put three ROC points on one
    line; a ROC curve that drops such intermediate points skips the 0.8 point and settles for 0.7.
    """
    y_true = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    prob = np.array([0.9, 0.8, 0.7, 0.2, 0.8, 0.7, 0.6, 0.1])

    threshold, _ = choose_threshold(y_true, prob, target_sensitivity=0.5)

    sensitivity, specificity = np.mean(prob[y_true == 1] >= threshold), np.mean(prob[y_true == 0] < threshold)
    assert (threshold, sensitivity, specificity) == (0.8, 0.5, 0.75)


def test_thresholds_are_probabilities():
    y_true = np.array([0, 1, 0, 1])
    prob = np.array([0.9, 0.1, 0.8, 0.2])  # anti-correlated: the best Youden point is "call nothing positive"

    threshold, _ = choose_threshold(y_true, prob)

    assert 0.0 <= threshold <= 1.0
