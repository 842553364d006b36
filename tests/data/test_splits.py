"""assign_splits and check_no_patient_leak: patient-disjoint, stratified, reproducible splits."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import pytest
from synthetic import write_csv

from covidct.data.manifest import SPLITS, Columns, Manifest, Sample, read_manifest
from covidct.data.splits import assign_splits, check_no_patient_leak, split_method
from covidct.errors import InputError, OptimisticMetricsWarning, SplitLeakError

CLASSES = ("COVID", "non-COVID")


def make_manifest(
    labels_per_patient: list[int], *, slices: int = 3, has_ids: bool = True, splits: list[str] | None = None
) -> Manifest:
    """One row per slice; patient i has label ``labels_per_patient[i]`` and, if given, split ``splits[i]``."""
    samples = tuple(
        Sample(
            Path(f"P{patient:03d}_{index}.png"),
            label,
            f"P{patient:03d}" if has_ids else None,
            None if splits is None else splits[patient],
        )
        for patient, label in enumerate(labels_per_patient)
        for index in range(slices)
    )
    return Manifest(samples, CLASSES, 0, Path("data.csv"))


BALANCED = [0, 1] * 20  # 40 patients, 20 per class


def split_of_patient(manifest: Manifest) -> dict[str, set[str]]:
    splits = defaultdict(set)
    for sample in manifest.samples:
        splits[sample.group].add(sample.split)
    return splits


def splits_by_path(manifest: Manifest) -> list[tuple[str, str]]:
    return [(s.path.name, s.split) for s in manifest.samples]


def test_every_sample_gets_a_split_and_no_patient_crosses_splits():
    assigned = assign_splits(make_manifest(BALANCED))

    assert {s.split for s in assigned.samples} == set(SPLITS)
    assert all(len(splits) == 1 for splits in split_of_patient(assigned).values())
    check_no_patient_leak(assigned)


def test_every_split_has_both_classes_in_proportion():
    assigned = assign_splits(make_manifest(BALANCED))

    for split in SPLITS:
        counts = assigned.class_counts(split)
        assert counts["COVID"] > 0 and counts["non-COVID"] > 0, (split, counts)
    patients_in_test = sum(1 for splits in split_of_patient(assigned).values() if splits == {"test"})
    assert 4 <= patients_in_test <= 8  # 15% of 40 patients


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_same_seed_gives_the_same_split(seed):
    first = assign_splits(make_manifest(BALANCED), seed=seed)
    second = assign_splits(make_manifest(BALANCED), seed=seed)

    assert splits_by_path(first) == splits_by_path(second)


def test_another_seed_gives_another_split():
    assert splits_by_path(assign_splits(make_manifest(BALANCED), seed=0)) != splits_by_path(
        assign_splits(make_manifest(BALANCED), seed=1)
    )


def test_labels_and_paths_are_kept():
    manifest = make_manifest(BALANCED)

    assigned = assign_splits(manifest)

    assert [(s.path, s.label, s.group) for s in assigned.samples] == [
        (s.path, s.label, s.group) for s in manifest.samples
    ]


def test_without_patient_ids_it_warns_that_metrics_are_optimistic():
    with pytest.warns(
        OptimisticMetricsWarning, match="no patient ids.*metrics will be optimistic.*--group-col"
    ):
        assigned = assign_splits(make_manifest(BALANCED, slices=1, has_ids=False))

    assert {s.split for s in assigned.samples} == set(SPLITS)


def test_with_patient_ids_it_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assign_splits(make_manifest(BALANCED))


def test_a_split_column_is_used_as_given():
    splits = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    manifest = make_manifest(BALANCED, splits=splits)

    assert assign_splits(manifest, seed=3) is manifest


LEAKY = [
    {"path": f"{p}_{i}.png", "label": label, "patient_id": p, "split": split}
    for p, label, split in [
        ("P1", "COVID", "train"),
        ("P2", "non-COVID", "train"),
        ("P3", "COVID", "test"),
        ("P4", "non-COVID", "test"),
    ]
    for i in range(2)
] + [{"path": "P1_9.png", "label": "COVID", "patient_id": "P1", "split": "test"}]


@pytest.mark.parametrize(
    "check", [check_no_patient_leak, assign_splits], ids=["check_no_patient_leak", "assign_splits"]
)
def test_a_split_column_that_puts_a_patient_in_train_and_test_is_refused(tmp_path, check):
    manifest = read_manifest(write_csv(tmp_path / "leaky.csv", LEAKY))

    with pytest.raises(
        SplitLeakError,
        match=(
            r"patient P1 is in both train and test \(1 leaking patients "
            r"in all\); fix the split column, or remove it from the CSV"
        ),
    ) as raised:
        check(manifest)

    assert raised.value.path == str(tmp_path / "leaky.csv")


def test_leak_check_passes_a_clean_split_column(tiny_dataset):
    check_no_patient_leak(read_manifest(tiny_dataset.csv))


@pytest.mark.parametrize(
    ("labels", "slices", "message"),
    [
        pytest.param(
            [0, 1, 0, 1, 0],
            4,
            r"class COVID has only 3 patients/groups; a stratified 15% "
            r"hold-out needs at least 7: add data or give a split column",
            id="too-few-patients",
        ),
        pytest.param(
            [0] + [1] * 20,
            2,
            r"class COVID has only 1 patients/groups; a stratified 15% hold-out needs at least 7",
            id="one-positive-patient",
        ),
    ],
)
def test_split_errors(labels, slices, message):
    with pytest.raises(InputError, match=message):
        assign_splits(make_manifest(labels, slices=slices))


@pytest.mark.parametrize(
    ("manifest", "method"),
    [
        (make_manifest(BALANCED, splits=["train"] * 40), "split column"),
        (make_manifest(BALANCED), "stratified, grouped by patient id"),
        (
            make_manifest(BALANCED, has_ids=False),
            "stratified by image (no patient ids: metrics are optimistic)",
        ),
    ],
    ids=["split-column", "patient-ids", "no-ids"],
)
def test_split_method_describes_the_split(manifest, method):
    assert split_method(manifest) == method


@pytest.mark.shared_data
def test_the_ucsd_official_split_does_not_leak(shared_data):
    manifest = read_manifest(
        shared_data / "ucsd_covid_ct" / "metadata.csv",
        columns=Columns(path="rel_path", label="label_name", group="patient_id", split="official_split"),
    )

    check_no_patient_leak(manifest)
    assert assign_splits(manifest) is manifest
