"""Train/val/test assignment grouped by patient, and the check that no patient crosses splits."""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from covidct.data.manifest import SPLITS, Manifest
from covidct.errors import InputError, OptimisticMetricsWarning, SplitLeakError


def split_method(manifest: Manifest) -> str:
    """Describe how the splits of ``manifest`` were (or will be) made, for the model card."""
    if manifest.has_splits:
        return "split column"
    if manifest.has_patient_ids:
        return "stratified, grouped by patient id"
    return "stratified by image (no patient ids: metrics are optimistic)"


def assign_splits(
    manifest: Manifest, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Manifest:
    """Return ``manifest`` with every sample in train, val or test, no patient in two splits.

    A split column is used as given (and checked for leaks). Otherwise samples are split stratified by
    label and grouped by patient id; deterministic for a given ``seed``, so ``evaluate`` can rebuild
    the split that ``train`` used.

    Raises:
        SplitLeakError: a given split column puts one patient in two splits.
        InputError: a split ends up without a class.
    """
    if manifest.has_splits:
        check_no_patient_leak(manifest)
        return manifest
    if not manifest.has_patient_ids:
        warnings.warn(
            f"{manifest.origin}: no patient ids, so slices of one patient can land in train and test and the "
            "metrics will be optimistic; give a patient_id column (--group-col) to avoid this.",
            OptimisticMetricsWarning,
            stacklevel=2,
        )
    labels = np.array([s.label for s in manifest.samples])
    groups = np.array(
        [s.group if s.group is not None else f"__image_{i}" for i, s in enumerate(manifest.samples)]
    )
    split_of = np.full(len(labels), "train", dtype=object)
    test_index = _one_fold(labels, groups, test_fraction, seed, np.arange(len(labels)), manifest.classes)
    split_of[test_index] = "test"
    rest = np.flatnonzero(split_of == "train")
    val_index = _one_fold(
        labels[rest], groups[rest], val_fraction / (1 - test_fraction), seed + 1, rest, manifest.classes
    )
    split_of[val_index] = "val"
    samples = tuple(
        dataclasses.replace(s, split=str(split)) for s, split in zip(manifest.samples, split_of, strict=True)
    )
    assigned = dataclasses.replace(manifest, samples=samples)
    _check_every_split_has_each_class(assigned)
    return assigned


def _one_fold(
    labels: np.ndarray,
    groups: np.ndarray,
    fraction: float,
    seed: int,
    positions: np.ndarray,
    classes: tuple[str, ...],
) -> np.ndarray:
    n_splits = max(2, round(1 / fraction))
    for label in np.unique(labels):
        n_groups = len(set(groups[labels == label].tolist()))
        if n_groups < n_splits:
            raise InputError(
                f"class {classes[label]} has only {n_groups} patients/groups; "
                f"a stratified {fraction:.0%} hold-out needs at least "
                f"{n_splits}: add data or give a split column"
            )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held_out = next(folds.split(np.zeros(len(labels)), labels, groups))
    return positions[held_out]


def check_no_patient_leak(manifest: Manifest) -> None:
    """Raise if any patient (group) has samples in more than one split.

    Raises:
        SplitLeakError: naming the first leaking patient and its splits.
    """
    splits_of = defaultdict(set)
    for sample in manifest.samples:
        if sample.group is not None:
            splits_of[sample.group].add(sample.split)
    leaks = {group: splits for group, splits in splits_of.items() if len(splits) > 1}
    if leaks:
        group, splits = sorted(leaks.items())[0]
        ordered = " and ".join(s for s in SPLITS if s in splits)
        raise SplitLeakError(
            f"patient {group} is in both {ordered} ({len(leaks)} "
            "leaking patients in all); fix the split column, "
            "or remove it from the CSV to let covidct split by patient.",
            path=manifest.origin,
        )


def _check_every_split_has_each_class(manifest: Manifest) -> None:
    for split in SPLITS:
        counts = manifest.class_counts(split)
        empty = [name for name, count in counts.items() if count == 0]
        if empty:
            raise InputError(
                f"the {split} split has no images of class {empty}; add data or give a split column",
                path=manifest.origin,
            )
