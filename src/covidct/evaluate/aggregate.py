"""Slice probabilities -> one probability per patient (the rules: ``model.decision``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covidct.errors import InputError, OptionError
from covidct.evaluate.metrics import check_binary_inputs
from covidct.model.decision import (
    DEFAULT_TOPK_FRACTION,
    Aggregate,
    aggregate_slices,
    parse_aggregate,
)


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
