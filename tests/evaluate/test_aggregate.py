"""Slice -> patient aggregation rules and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import InputError, OptionError
from covidct.evaluate.aggregate import aggregate_by_group
from covidct.model.decision import Aggregate, aggregate_slices, describe_rule

# Patient B comes first so the output order (first appearance, not alphabetical) is checked too.
GROUPS = ["B", "A", "B", "A", "A", "A", "C"]
LABELS = [0, 1, 0, 1, 1, 1, 1]
PROB = [0.2, 0.1, 0.4, 0.9, 0.3, 0.5, 0.7]
# A: slices 0.1, 0.9, 0.3, 0.5; B: 0.2, 0.4; C: 0.7.

RULE_CASES = [
    pytest.param(Aggregate.MEAN, 0.25, [0.3, 0.45, 0.7], id="mean"),
    pytest.param(Aggregate.MAX, 0.25, [0.4, 0.9, 0.7], id="max"),
    # ceil(0.25 * 4) = 1 slice for A, ceil(0.25 * 2) = 1 for B, at least 1 for C.
    pytest.param(Aggregate.TOPK, 0.25, [0.4, 0.9, 0.7], id="topk-quarter"),
    # ceil(0.5 * 4) = 2 slices for A (0.9, 0.5), 1 for B, 1 for C.
    pytest.param(Aggregate.TOPK, 0.5, [0.4, 0.7, 0.7], id="topk-half"),
    pytest.param(Aggregate.TOPK, 1.0, [0.3, 0.45, 0.7], id="topk-all-is-mean"),
    pytest.param("max", 0.25, [0.4, 0.9, 0.7], id="rule-as-string"),
]


@pytest.mark.parametrize(("rule", "fraction", "expected"), RULE_CASES)
def test_each_rule_on_a_small_table(rule, fraction, expected):
    scores = aggregate_by_group(np.array(PROB), np.array(LABELS), GROUPS, rule, topk_fraction=fraction)
    np.testing.assert_array_equal(scores.groups, ["B", "A", "C"])
    np.testing.assert_allclose(scores.prob, expected)
    np.testing.assert_array_equal(scores.labels, [0, 1, 1])
    np.testing.assert_array_equal(scores.n_slices, [2, 4, 1])


def test_topk_count_is_not_inflated_by_floating_point():
    # 0.1 * 30 is 3.0000000000000004 in floating point; the top 3 slices, not 4, must be averaged.
    prob = np.r_[np.zeros(26), 0.1, 1.0, 1.0, 1.0]
    scores = aggregate_by_group(prob, np.zeros(30, int), ["P"] * 30, Aggregate.TOPK, topk_fraction=0.1)
    assert scores.prob[0] == pytest.approx(1.0)


def test_patient_with_both_labels_is_named_in_the_error():
    with pytest.raises(InputError, match="Patient P042 has slices labelled both 0 and 1"):
        aggregate_by_group(
            np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1]), ["P042", "P042", "P7"], Aggregate.MEAN
        )


def test_unknown_rule_suggests_the_close_one():
    with pytest.raises(
        OptionError, match=r"--aggregate must be mean, max or topk; got 'maen' \(did you mean 'mean'\?\)"
    ):
        aggregate_by_group(np.array([0.1]), np.array([0]), ["P"], "maen")


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_topk_fraction_outside_unit_interval_is_rejected(fraction):
    with pytest.raises(OptionError, match=r"topk_fraction must be in \(0, 1\]"):
        aggregate_by_group(np.array([0.1]), np.array([0]), ["P"], Aggregate.TOPK, topk_fraction=fraction)


def test_group_count_must_match_slices():
    with pytest.raises(InputError, match="2 patient ids but 3 slices"):
        aggregate_by_group(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]), ["P", "Q"], Aggregate.MEAN)


def test_missing_patient_id_is_an_error():
    with pytest.raises(InputError, match=r"1 slice\(s\) have no patient id \(first at position 1\)"):
        aggregate_by_group(np.array([0.1, 0.2]), np.array([0, 0]), ["P", ""], Aggregate.MEAN)


# One study's slices: 0.1, 0.9, 0.3, 0.5 (the same numbers as patient A above).
STUDY_CASES = [
    pytest.param(Aggregate.MEAN, 0.25, 0.45, "mean", id="mean"),
    pytest.param(Aggregate.MAX, 0.25, 0.9, "max", id="max"),
    pytest.param(Aggregate.TOPK, 0.5, 0.7, "top 50% mean", id="top-half"),
    pytest.param(Aggregate.TOPK, 0.1, 0.9, "top 10% mean", id="top-tenth-is-at-least-one-slice"),
]


@pytest.mark.parametrize(("rule", "fraction", "expected", "described"), STUDY_CASES)
def test_one_study_is_aggregated_like_a_patient(rule, fraction, expected, described):
    slices = np.array([0.1, 0.9, 0.3, 0.5])

    assert aggregate_slices(slices, rule, topk_fraction=fraction) == pytest.approx(expected)
    assert aggregate_by_group(slices, np.ones(4, int), ["S"] * 4, rule, topk_fraction=fraction).prob[
        0
    ] == pytest.approx(expected)
    assert describe_rule(rule, fraction) == described
