"""Choosing the study aggregation rule on validation scores, and the documented fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.model.decision import Aggregate
from covidct.train.study_rule import (
    DEFAULT_RULE,
    MIN_PATIENTS_PER_CLASS,
    StudyRule,
    choose_study_rule,
)


def _patients(slice_probs: list[list[float]], labels: list[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Flatten per-patient slice probabilities into (y_true, prob, groups) slice arrays."""
    y, p, g = [], [], []
    for index, (probs, label) in enumerate(zip(slice_probs, labels, strict=True)):
        y += [label] * len(probs)
        p += probs
        g += [f"P{index}"] * len(probs)
    return np.array(y), np.array(p), g


# Focal: positives have one hot slice in 20 cold ones, negatives 20 lukewarm ones, so only the most focal rule
# (max) ranks every patient right (top 10% of 20 slices already averages in a cold slice).
FOCAL = _patients([[0.9] + [0.0] * 19] * 5 + [[0.5] * 20] * 5, [1] * 5 + [0] * 5)
# Diffuse: every rule separates the classes perfectly, so the tie goes to the smoothest (mean).
DIFFUSE = _patients([[0.8, 0.7, 0.9, 0.6]] * 5 + [[0.2, 0.1, 0.3, 0.2]] * 5, [1] * 5 + [0] * 5)
# Top half: positives have two warm slices; negatives one hot slice over lukewarm ones: the mean and the
# top 25% (one slice of 4) rank them wrong, the top 50% right.
TOP_HALF = _patients([[0.7, 0.7, 0.0, 0.0]] * 5 + [[0.8, 0.3, 0.3, 0.3]] * 5, [1] * 5 + [0] * 5)

CHOICE_CASES = [
    pytest.param(FOCAL, StudyRule(Aggregate.MAX), id="focal-max"),
    pytest.param(DIFFUSE, StudyRule(Aggregate.MEAN), id="diffuse-tie-goes-to-mean"),
    pytest.param(TOP_HALF, StudyRule(Aggregate.TOPK, 0.5), id="top-half"),
]


@pytest.mark.parametrize(("scores", "expected"), CHOICE_CASES)
def test_the_best_validation_rule_is_chosen(scores, expected):
    y, p, groups = scores

    choice = choose_study_rule(y, p, groups)

    assert choice.rule == expected
    assert choice.source.startswith("validation: best patient-level ROC-AUC over 10 patients")
    assert choice.auc_by_rule[str(expected)] == max(choice.auc_by_rule.values())
    assert list(choice.auc_by_rule) == ["mean", "top 50% mean", "top 25% mean", "top 10% mean", "max"]


FALLBACK_CASES = [
    pytest.param(None, "default (top 25% mean): validation slices have no patient ids", id="no-patient-ids"),
    pytest.param(
        ["P0"] * 39 + [None],
        "default (top 25% mean): validation slices have no patient ids",
        id="one-id-missing",
    ),
    pytest.param(
        [f"P{i // 4}" for i in range(20)] + [f"Q{i // 20}" for i in range(20)],
        f"validation has 5 positive and 1 negative patients; need {MIN_PATIENTS_PER_CLASS} of each",
        id="too-few-negative-patients",
    ),
]


@pytest.mark.parametrize(("groups", "reason"), FALLBACK_CASES)
def test_the_default_rule_is_used_and_explained_when_validation_cannot_choose(groups, reason):
    y, p, _ = DIFFUSE

    choice = choose_study_rule(y, p, groups)

    assert choice.rule == DEFAULT_RULE == StudyRule(Aggregate.TOPK, 0.25)
    assert choice.source.startswith("default (top 25% mean): ")
    assert reason in choice.source
    assert choice.auc_by_rule == {}
