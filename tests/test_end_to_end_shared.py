"""train -> evaluate through the CLI on 40 real UCSD COVID-CT slices (official, patient-disjoint split)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest
from synthetic import write_csv
from typer.testing import CliRunner

from covidct.cli.app import app

# the same images sit in both classes (../shared/data/README.md): never use them
DUPLICATES = {
    "CT_COVID/kjr-21-e24-p5-29.png",
    "CT_COVID/kjr-21-e24-p5-31.png",
    "CT_NonCOVID/71%0.jpg",
    "CT_NonCOVID/71%1.jpg",
}
SLICES_PER_SPLIT_AND_CLASS = {"train": 8, "val": 4, "test": 8}


def ucsd_subset(dataset, out_csv):
    """~40 rows (whole patients first, in patient-id order) with absolute paths; returns the rows written."""
    with (dataset / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = [
            row for row in csv.DictReader(handle) if not any(row["rel_path"].endswith(d) for d in DUPLICATES)
        ]
    by_group = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["patient_id"], r["rel_path"])):
        by_group[(row["official_split"], row["label_name"])].append(row)
    chosen = [
        {
            "path": str(dataset / row["rel_path"]),
            "label": row["label_name"],
            "patient_id": row["patient_id"],
            "split": split,
        }
        for (split, _), group in sorted(by_group.items())
        for row in group[: SLICES_PER_SPLIT_AND_CLASS[split]]
    ]
    write_csv(out_csv, chosen)
    return chosen


@pytest.mark.shared_data
@pytest.mark.slow
def test_train_and_evaluate_on_real_ucsd_slices(shared_data, random_weights, tmp_path):
    rows = ucsd_subset(shared_data / "ucsd_covid_ct", tmp_path / "subset.csv")
    test_rows = [row for row in rows if row["split"] == "test"]
    subset, model, evaluation = (str(tmp_path / name) for name in ("subset.csv", "model", "eval"))
    runner = CliRunner()

    trained = runner.invoke(
        app,
        [
            "train",
            subset,
            "--out",
            model,
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--weights",
            str(random_weights),
            "--device",
            "cpu",
        ],
    )
    assert trained.exit_code == 0, trained.output
    evaluated = runner.invoke(
        app, ["evaluate", model, subset, "--out", evaluation, "--n-resamples", "100", "--device", "cpu"]
    )
    assert evaluated.exit_code == 0, evaluated.output

    assert len(rows) == 40
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    assert card["data"]["unusable_files"] == []
    assert card["data"]["class_counts"]["train"] == {"COVID": 8, "non-COVID": 8}
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["slice_level"]["n"] == len(test_rows) == 16
    assert metrics["patient_level"] is not None
    assert metrics["patient_level"]["n"] == len({row["patient_id"] for row in test_rows})
