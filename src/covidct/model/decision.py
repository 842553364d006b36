"""What the model card decides from probabilities: the label at its threshold and the study aggregation rule.

Below ``infer`` and ``evaluate`` so that predicting, evaluating and choosing a rule in training all
apply one rule, with the card's class names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

from covidct.errors import OptionError, did_you_mean

if TYPE_CHECKING:  # the CLI declares --aggregate from this module: it must not import numpy at start-up
    import numpy as np

    from covidct.model.card import Decision, ModelCard


class Aggregate(StrEnum):
    """How a patient's slice probabilities become the patient's probability.

    MEAN suits diffuse disease seen on most slices; MAX and TOPK suit focal findings that a mean over
    many normal slices would dilute (MAX is the most sensitive and the most noise-prone).
    """

    MEAN = "mean"
    MAX = "max"
    TOPK = "topk"


DEFAULT_TOPK_FRACTION = 0.25


def label_at_threshold(
    prob_positive: float, card: ModelCard, other_probabilities: Mapping[str, float] | None = None
) -> str:
    """The positive class when ``prob_positive`` reaches the card's threshold; else the other class.

    With several other classes, the likeliest in ``other_probabilities`` (class name -> probability,
    needed only then: a slice's own, or the mean of a study's slices).
    """
    if prob_positive >= card.decision.threshold:
        return card.positive_class
    others = negative_classes(card)
    return others[0] if len(others) == 1 else max(others, key=lambda name: other_probabilities[name])


def negative_classes(card: ModelCard) -> tuple[str, ...]:
    """The card's classes other than the positive one, in card order."""
    return tuple(name for name in card.classes if name != card.positive_class)


def negative_name(card: ModelCard) -> str:
    """What a binary (positive vs rest) report calls the negative side: the other class, or all of them."""
    return " / ".join(negative_classes(card))


def parse_aggregate(rule: Aggregate | str) -> Aggregate:
    """Return ``rule`` as an ``Aggregate``.

    Raises:
        OptionError: ``rule`` is not one of mean, max, topk (with a "did you mean" when close).
    """
    try:
        return Aggregate(rule)
    except ValueError:
        hint = did_you_mean(rule, [a.value for a in Aggregate])
        raise OptionError(f"--aggregate must be mean, max or topk; got {str(rule)!r}{hint}.") from None


def aggregate_slices(
    slice_prob: np.ndarray, rule: Aggregate, *, topk_fraction: float = DEFAULT_TOPK_FRACTION
) -> float:
    """One patient's or study's probability from its (n,) slice probabilities, n >= 1.

    The mean of the slices (MEAN), their maximum (MAX), or the mean of the ``ceil(topk_fraction * n)``
    highest slices (TOPK; always at least one slice).
    """
    if rule is Aggregate.MEAN:
        return float(slice_prob.mean())
    if rule is Aggregate.MAX:
        return float(slice_prob.max())
    # The epsilon keeps 0.1 * 30 (3.0000000000000004 in floating point) at 3 slices, not 4.
    k = max(1, math.ceil(topk_fraction * slice_prob.size - 1e-9))
    highest_last = slice_prob.copy()
    highest_last.sort()
    return float(highest_last[-k:].mean())


def card_study_rule(decision: Decision) -> tuple[Aggregate, float]:
    """The study aggregation rule a card's decision names and its top-k fraction (default if it has none)."""
    return parse_aggregate(decision.study_aggregate), decision.study_topk_fraction or DEFAULT_TOPK_FRACTION


def describe_rule(rule: Aggregate, topk_fraction: float = DEFAULT_TOPK_FRACTION) -> str:
    """A short readable name for a rule: "mean", "max" or "top 25% mean" (for reports, tables and plots)."""
    return f"top {topk_fraction:.0%} mean" if rule is Aggregate.TOPK else rule.value
