"""Slice probabilities -> one probability per patient or study: patient-level metrics and study predictions."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from covidct.errors import InputError, OptionError
from covidct.evaluate.metrics import check_binary_inputs

if TYPE_CHECKING:
    from covidct.model.card import Decision


class Aggregate(StrEnum):
    """How a patient's slice probabilities become the patient's probability.

    MEAN suits diffuse disease seen on most slices; MAX and TOPK suit focal findings that a mean over
    many normal slices would dilute (MAX is the most sensitive and the most noise-prone).
    """

    MEAN = "mean"
    MAX = "max"
    TOPK = "topk"


DEFAULT_TOPK_FRACTION = 0.25


@dataclass(frozen=True)
class GroupedScores:
    """One row per patient, in order of the patient's first slice.

    Attributes:
        groups: (G,) patient ids as str.
        prob: (G,) float64 aggregated probability of the positive class.
        labels: (G,) int64 patient label in {0, 1} (all of a patient's slices share it).
        n_slices: (G,) int64 number of slices per patient.
    """

    groups: np.ndarray
    prob: np.ndarray
    labels: np.ndarray
    n_slices: np.ndarray


def parse_aggregate(rule: Aggregate | str) -> Aggregate:
    """Return ``rule`` as an ``Aggregate``.

    Raises:
        OptionError: ``rule`` is not one of mean, max, topk (with a "did you mean" when close).
    """
    try:
        return Aggregate(rule)
    except ValueError:
        choices = [a.value for a in Aggregate]
        close = difflib.get_close_matches(str(rule), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise OptionError(f"--aggregate must be mean, max or topk; got {str(rule)!r}{hint}.") from None


def aggregate_by_group(
    prob: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    rule: Aggregate,
    *,
    topk_fraction: float = DEFAULT_TOPK_FRACTION,
) -> GroupedScores:
    """Return one probability and label per patient from slice probabilities.

    The patient probability is the mean of its slices (MEAN), their maximum (MAX), or the mean of its
    ``ceil(topk_fraction * n_slices)`` highest slices (TOPK; always at least one slice).

    Args:
        prob: (N,) slice probabilities of the positive class in [0, 1].
        labels: (N,) slice labels in {0, 1}.
        groups: (N,) patient id of each slice.
        rule: aggregation rule (an ``Aggregate`` or its string value).
        topk_fraction: fraction of a patient's slices averaged by TOPK, in (0, 1].

    Raises:
        InputError: lengths differ, a slice has no patient id, or a patient's slices carry both labels.
        OptionError: unknown ``rule`` or ``topk_fraction`` outside (0, 1].
    """
    rule = parse_aggregate(rule)
    if not 0.0 < topk_fraction <= 1.0:
        raise OptionError(f"topk_fraction must be in (0, 1]; got {topk_fraction!r}.")
    y, p = check_binary_inputs(labels, prob)
    ids = check_patient_ids(groups, len(y))
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    patient_order = np.argsort(first, kind="stable")
    out_prob, out_label, out_count = [], [], []
    for g in patient_order:
        members = inverse == g
        patient_labels = np.unique(y[members])
        if patient_labels.size > 1:
            raise InputError(
                f"Patient {unique[g]} has slices labelled both 0 and 1; a patient-level label must be one "
                "class. Fix the label column, or give slice-level patient ids that split this patient."
            )
        out_prob.append(aggregate_slices(p[members], rule, topk_fraction=topk_fraction))
        out_label.append(patient_labels[0])
        out_count.append(int(members.sum()))
    return GroupedScores(
        groups=unique[patient_order].astype(str),
        prob=np.asarray(out_prob, dtype=np.float64),
        labels=np.asarray(out_label, dtype=np.int64),
        n_slices=np.asarray(out_count, dtype=np.int64),
    )


def check_patient_ids(groups: Sequence[str], n: int) -> np.ndarray:
    """Return ``groups`` as an (N,) str array after checking there is one non-empty id per slice.

    Raises:
        InputError: ``len(groups) != n`` or a slice has no (None or empty) patient id.
    """
    if len(groups) != n:
        raise InputError(f"{len(groups)} patient ids but {n} slices; expected one patient id per slice.")
    missing = [i for i, g in enumerate(groups) if g is None or str(g) == ""]
    if missing:
        raise InputError(
            f"{len(missing)} slice(s) have no patient id (first at position {missing[0]}); give every slice "
            "a patient id or evaluate without patient ids."
        )
    return np.asarray([str(g) for g in groups])


def aggregate_slices(slice_prob: np.ndarray, rule: Aggregate, *, topk_fraction: float = DEFAULT_TOPK_FRACTION) -> float:
    """One patient's or study's probability from its (n,) slice probabilities, n >= 1 (see ``aggregate_by_group``)."""
    if rule is Aggregate.MEAN:
        return float(slice_prob.mean())
    if rule is Aggregate.MAX:
        return float(slice_prob.max())
    # The epsilon keeps 0.1 * 30 (3.0000000000000004 in floating point) at 3 slices, not 4.
    k = max(1, math.ceil(topk_fraction * slice_prob.size - 1e-9))
    return float(np.sort(slice_prob)[-k:].mean())


def card_study_rule(decision: Decision) -> tuple[Aggregate, float]:
    """The study aggregation rule a model card's decision names, and its top-k fraction (the default when the card has none)."""
    return parse_aggregate(decision.study_aggregate), decision.study_topk_fraction or DEFAULT_TOPK_FRACTION


def describe_rule(rule: Aggregate, topk_fraction: float = DEFAULT_TOPK_FRACTION) -> str:
    """A short readable name for a rule: "mean", "max" or "top 25% mean" (for reports, tables and plots)."""
    return f"top {topk_fraction:.0%} mean" if rule is Aggregate.TOPK else rule.value
