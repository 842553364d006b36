"""Choose how a study's slice probabilities become its probability, on the validation split's patients.

Candidates run from the smoothest (mean of all slices) to the most focal (the single highest slice).
The one with the best patient-level ROC-AUC on validation wins; a tie goes to the smoother rule,
which is less swayed by one noisy slice. Without patient ids, or with fewer than
``MIN_PATIENTS_PER_CLASS`` validation patients in a class, an AUC would be noise, so the card gets
the default rule (``covidct.model.card.DEFAULT_STUDY_AGGREGATE``) and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from covidct.evaluate.aggregate import aggregate_by_group
from covidct.model.card import DEFAULT_STUDY_AGGREGATE, DEFAULT_STUDY_TOPK_FRACTION
from covidct.model.decision import DEFAULT_TOPK_FRACTION, Aggregate, describe_rule

MIN_PATIENTS_PER_CLASS = 5
# AUCs closer than this are a tie (they differ by floating-point noise, not by ranking).
_AUC_TIE = 1e-9


@dataclass(frozen=True)
class StudyRule:
    """One aggregation rule: an ``Aggregate`` and, for TOPK, the fraction of slices averaged (else None)."""

    aggregate: Aggregate
    topk_fraction: float | None = None

    def __str__(self) -> str:
        return describe_rule(self.aggregate, self.topk_fraction or DEFAULT_TOPK_FRACTION)


# Smoothest first: the order breaks ties.
CANDIDATES = (
    StudyRule(Aggregate.MEAN),
    StudyRule(Aggregate.TOPK, 0.5),
    StudyRule(Aggregate.TOPK, 0.25),
    StudyRule(Aggregate.TOPK, 0.1),
    StudyRule(Aggregate.MAX),
)
DEFAULT_RULE = StudyRule(Aggregate(DEFAULT_STUDY_AGGREGATE), DEFAULT_STUDY_TOPK_FRACTION)


@dataclass(frozen=True)
class StudyRuleChoice:
    """The chosen rule and, for the model card, where it came from.

    Attributes:
        source: "validation: ..." with every candidate's patient-level ROC-AUC, or
            "default: ..." with the reason.
        auc_by_rule: each candidate's validation patient-level ROC-AUC (empty for the default).
    """

    rule: StudyRule
    source: str
    auc_by_rule: dict[str, float]


def choose_study_rule(
    y_true: np.ndarray, prob: np.ndarray, groups: Sequence[str | None] | None
) -> StudyRuleChoice:
    """Return the candidate rule with the best validation patient-level ROC-AUC, or the default and why.

    Args:
        y_true: (N,) validation slice labels in {0, 1}.
        prob: (N,) calibrated positive-class probabilities of the same slices.
        groups: (N,) patient id per slice, or None when the data has no patient ids.
    """
    if groups is None or any(g is None or str(g) == "" for g in groups):
        return _default("validation slices have no patient ids, so no patient-level AUC")
    patients = aggregate_by_group(prob, y_true, groups, Aggregate.MEAN)
    n_positive = int(patients.labels.sum())
    n_negative = len(patients.labels) - n_positive
    if min(n_positive, n_negative) < MIN_PATIENTS_PER_CLASS:
        return _default(
            f"validation has {n_positive} positive and {n_negative} "
            f"negative patients; need {MIN_PATIENTS_PER_CLASS} of each"
        )
    auc_by_rule = {}
    for rule in CANDIDATES:
        scores = aggregate_by_group(
            prob, y_true, groups, rule.aggregate, topk_fraction=rule.topk_fraction or DEFAULT_TOPK_FRACTION
        )
        auc_by_rule[str(rule)] = float(roc_auc_score(scores.labels, scores.prob))
    best = max(auc_by_rule.values())
    chosen = next(rule for rule in CANDIDATES if auc_by_rule[str(rule)] >= best - _AUC_TIE)
    listed = ", ".join(f"{name} {auc:.3f}" for name, auc in auc_by_rule.items())
    source = (
        f"validation: best patient-level ROC-AUC over {len(patients.labels)} "
        f"patients (ties go to the smoother rule); {listed}"
    )
    return StudyRuleChoice(chosen, source, auc_by_rule)


def _default(reason: str) -> StudyRuleChoice:
    return StudyRuleChoice(DEFAULT_RULE, f"default ({DEFAULT_RULE}): {reason}", {})
