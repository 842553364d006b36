"""Site-shift flag: per-slice statistics, the card's reference, the KS rule, and evaluate writing
it next to the metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from covidct.cli.app import app
from covidct.data.manifest import read_manifest
from covidct.evaluate.run import evaluate_model
from covidct.evaluate.site_shift import (
    SHIFT_KS_THRESHOLD,
    detect_site_shift,
    ks_distance_to_quantiles,
    reference_statistics,
    slice_statistics,
)
from covidct.model.pretrained import resolve_pretrained
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

LEVELS = np.linspace(0, 1, 41)


def _slices(brightness: float, n: int = 60, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.clip(rng.normal(brightness, 0.1, (n, 16, 16)), 0, 1).astype(np.float16))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0.0, {"mean_intensity": 0.0, "intensity_std": 0.0, "dark_fraction": 1.0}, id="black"),
        pytest.param(0.5, {"mean_intensity": 0.5, "intensity_std": 0.0, "dark_fraction": 0.0}, id="grey"),
    ],
)
def test_slice_statistics_of_flat_slices(value, expected):
    statistics = slice_statistics(torch.full((3, 8, 8), value, dtype=torch.float16))
    assert {name: values.tolist() for name, values in statistics.items()} == {
        name: [v] * 3 for name, v in expected.items()
    }


def test_slice_statistics_of_half_black_half_white():
    image = torch.zeros(1, 8, 8)
    image[:, :, 4:] = 1.0
    statistics = slice_statistics(image)
    assert statistics["mean_intensity"][0] == pytest.approx(0.5)
    assert statistics["dark_fraction"][0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("values", "reference", "expected"),
    [
        pytest.param(np.linspace(0, 1, 200), np.linspace(0, 1, 41), (0.0, 0.03), id="same-distribution"),
        pytest.param(np.full(50, 5.0), np.linspace(0, 1, 41), (1.0, 1.0), id="all-above"),
        pytest.param(np.linspace(0.5, 1.5, 200), np.linspace(0, 1, 41), (0.48, 0.52), id="half-overlap"),
    ],
)
def test_ks_distance_to_quantiles(values, reference, expected):
    assert expected[0] <= ks_distance_to_quantiles(values, reference, LEVELS) <= expected[1]


def test_reference_records_quantiles_of_each_statistic_and_the_ood_scores():
    reference = reference_statistics(_slices(0.4), val_ood_scores=np.arange(10.0))
    assert sorted(reference["quantiles"]) == ["dark_fraction", "intensity_std", "mean_intensity", "ood_score"]
    assert reference["n"] == {"mean_intensity": 60, "intensity_std": 60, "dark_fraction": 60, "ood_score": 10}
    assert all(np.all(np.diff(q) >= 0) and len(q) == 41 for q in reference["quantiles"].values())
    json.dumps(reference, allow_nan=False)  # goes into model.json


@pytest.mark.parametrize(
    ("test_brightness", "expected_shift"),
    [
        pytest.param(0.4, False, id="same-site"),
        pytest.param(0.7, True, id="brighter-site"),
    ],
)
def test_detect_site_shift_flags_a_statistic_beyond_the_threshold(test_brightness, expected_shift):
    reference = reference_statistics(_slices(0.4), val_ood_scores=None)
    shift = detect_site_shift(reference, slice_statistics(_slices(test_brightness, seed=1)))
    assert shift.is_shifted is expected_shift
    assert ("mean_intensity" in shift.flagged) is expected_shift
    assert set(shift.flagged) == {
        name for name, distance in shift.ks_distance.items() if distance > shift.threshold[name]
    }
    assert shift.threshold["mean_intensity"] == pytest.approx(
        max(SHIFT_KS_THRESHOLD, 1.63 * np.sqrt(120 / 3600)), abs=1e-4
    )
    assert set(shift.to_json_dict()) == {"likely_shift", "ks_distance", "flagged", "threshold"}


def test_the_note_names_the_statistic_and_its_distance():
    reference = reference_statistics(_slices(0.4), val_ood_scores=np.arange(50.0))
    shift = detect_site_shift(reference, slice_statistics(_slices(0.7)) | {"ood_score": np.arange(50.0)})
    assert shift.ks_distance["ood_score"] < 0.05
    assert shift.note().startswith(
        "Likely site shift: these test images differ strongly from the training data in mean intensity"
    )
    assert "Metrics measured on the training site may not hold here" in shift.note()


@pytest.fixture(scope="module")
def model_without_site_steps(tiny_dataset, random_weights, tmp_path_factory):
    """A 1-epoch 32 px model trained with every site step off, so a brighter copy of
    the data stays brighter."""
    config = TrainConfig(
        image_size=32,
        epochs=1,
        batch_size=16,
        device="cpu",
        crop_field=False,
        remove_annotations=False,
        standardise_intensity=False,
    )
    out = tmp_path_factory.mktemp("shift-model") / "model"
    return fit(
        read_manifest(tiny_dataset.csv), out, config, pretrained=resolve_pretrained(random_weights)
    ).model_dir


def _brighter_copy(tiny_dataset, root):
    rows = []
    with tiny_dataset.csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            source = tiny_dataset.csv.parent / row["path"]
            target = root / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.asarray(Image.open(source), np.float32) * 0.4 + 150).astype(np.uint8)).save(
                target
            )
            rows.append(row)
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


@pytest.mark.parametrize(
    ("brighter", "expected_shift"),
    [pytest.param(False, False, id="same-site"), pytest.param(True, True, id="brighter-site")],
)
def test_evaluate_writes_the_shift_flag_into_metrics_json_and_the_report(
    model_without_site_steps, tiny_dataset, tmp_path, brighter, expected_shift
):
    card = json.loads((model_without_site_steps / "model.json").read_text())
    assert (
        card["data"]["site_statistics"]["n"]["mean_intensity"] == 24
    )  # the training split: 8 patients x 3 slices
    assert [
        card["preprocessing"][step] for step in ("crop_field", "remove_annotations", "standardise_intensity")
    ] == [False, False, False]
    data = _brighter_copy(tiny_dataset, tmp_path / "data") if brighter else tiny_dataset.csv
    run = evaluate_model(
        model_without_site_steps, read_manifest(data), tmp_path / "eval", n_resamples=10, device="cpu"
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["site_shift"]["likely_shift"] is expected_shift
    assert ("mean_intensity" in metrics["site_shift"]["flagged"]) is expected_shift
    assert sorted(metrics["site_shift"]["ks_distance"]) == [
        "dark_fraction",
        "intensity_std",
        "mean_intensity",
        "ood_score",
    ]
    report = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert run.site_shift.note().replace("'", "&#x27;") in report
    assert report.index("<h2>Site shift</h2>") < report.index("<h2>Patient level</h2>")


def test_the_evaluate_command_prints_the_flag_under_the_metrics(
    model_without_site_steps, tiny_dataset, tmp_path
):
    data = _brighter_copy(tiny_dataset, tmp_path / "data")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(model_without_site_steps),
            str(data),
            "--out",
            str(tmp_path / "eval"),
            "--n-resamples",
            "10",
            "--device",
            "cpu",
        ],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert (
        "Likely site shift: these test images differ strongly from the training data in mean intensity"
        in output
    )
    assert output.index("Likely site shift") > output.index("threshold")
