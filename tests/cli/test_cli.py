"""The real typer app end to end: train -> evaluate -> predict on a tiny dataset,
help, and one-line errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main
from PIL import Image
from synthetic import write_csv
from typer.testing import CliRunner

from covidct.cli.app import app
from covidct.errors import CovidctWarning
from covidct.intended_use import RESEARCH_USE_STATEMENT

METRICS = ["auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "pr_auc", "brier", "ece"]
FIGURES = ["confusion.png", "pr.png", "reliability.png", "roc.png"]
PREDICTION_COLUMNS = [
    "path",
    "prob_covid",
    "label",
    "in_distribution",
    "ood_score",
    "message",
    "kind",
    "study_key",
    "series_key",
    "slice",
    "slice_index",
    "n_slices_total",
    "n_slices_used",
    "aggregate",
    "plot",
]
WIDE = {"COLUMNS": "250"}  # rich wraps at the terminal width; wide enough that paths stay on one line


def invoke(*args) -> typer.testing.Result:
    return CliRunner().invoke(app, [str(arg) for arg in args], env=WIDE)


def threshold(model_dir: Path) -> float:
    return json.loads((model_dir / "model.json").read_text())["decision"]["threshold"]


def all_command_paths() -> list[list[str]]:
    """Every command and sub-command of the app, found by walking it (a new command gets tested too)."""
    paths, stack = [[]], [([], typer.main.get_command(app))]
    while stack:
        prefix, group = stack.pop()
        for name, command in getattr(group, "commands", {}).items():
            paths.append([*prefix, name])
            stack.append(([*prefix, name], command))
    return sorted(paths)


def test_the_app_has_the_documented_commands():
    commands = {" ".join(path) for path in all_command_paths()}

    documented = {"train", "pretrain", "evaluate", "predict", "demo", "audit", "weights", "weights fetch"}
    assert documented <= commands


@pytest.mark.parametrize("command", all_command_paths(), ids=lambda path: " ".join(path) or "covidct")
def test_every_command_has_help(command):
    result = invoke(*command, "--help")

    assert result.exit_code == 0, result.output
    assert f"Usage: covidct {' '.join(command)}".strip() in " ".join(result.stdout.split())


def test_root_help_shows_the_research_use_statement():
    result = invoke("--help")

    assert RESEARCH_USE_STATEMENT in " ".join(result.stdout.split())


@pytest.fixture(scope="module")
def trained(tiny_dataset, random_weights, tmp_path_factory) -> Path:
    """``covidct train`` on the CSV manifest (patient ids and splits): one epoch, 64
    px, random start weights."""
    model_dir = tmp_path_factory.mktemp("cli") / "model"
    result = invoke(
        "train",
        tiny_dataset.csv,
        "--out",
        model_dir,
        "--image-size",
        64,
        "--epochs",
        1,
        "--batch-size",
        16,
        "--weights",
        random_weights,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert f"Model written to {model_dir}" in " ".join(result.stdout.split())
    return model_dir


def test_train_writes_a_model_dir(trained):
    assert sorted(p.name for p in trained.iterdir()) == [
        ".covidct-run.json",
        "model.json",
        "model.safetensors",
        "ood.safetensors",
        "train_log.csv",
    ]
    card = json.loads((trained / "model.json").read_text())
    assert card["preprocessing"]["image_size"] == 64
    assert card["data"]["split_method"] == "split column"


@pytest.fixture(scope="module")
def evaluated(trained, tiny_dataset) -> tuple[Path, typer.testing.Result]:
    out = trained.parent / "evaluation"
    return out, invoke(
        "evaluate", trained, tiny_dataset.csv, "--out", out, "--n-resamples", 50, "--device", "cpu"
    )


def test_evaluate_succeeds_and_names_the_report(evaluated):
    out, result = evaluated

    assert result.exit_code == 0, result.output
    assert str(out / "report.html") in " ".join(result.stdout.split())


def test_metrics_json_keeps_its_fixed_shape(evaluated, trained):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())

    assert sorted(metrics) == ["patient_level", "site_shift", "slice_level", "threshold"]
    assert metrics["threshold"] == json.loads((trained / "model.json").read_text())["decision"]["threshold"]
    for level, n in (("slice_level", 12), ("patient_level", 4)):  # the test split: 4 patients x 3 slices
        assert sorted(metrics[level]) == sorted(["n", *METRICS]), level
        assert metrics[level]["n"] == n
        for name in METRICS:
            entry = metrics[level][name]
            assert sorted(entry) == ["ci95", "value"], (level, name)
            assert len(entry["ci95"]) == 2
            assert entry["value"] is None or isinstance(entry["value"], float)


def test_evaluate_writes_the_report_figures_and_predictions(evaluated, tiny_dataset):
    out, _ = evaluated

    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".covidct-run.json", "failures.csv", "metrics.json", "predictions.csv", "report.html", *FIGURES]
    )
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert RESEARCH_USE_STATEMENT in (out / "report.html").read_text(encoding="utf-8")
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["patient_id"] for row in rows] == ["C06"] * 3 + ["C07"] * 3 + ["N06"] * 3 + ["N07"] * 3
    assert list(rows[0]) == ["path", "patient_id", "label", "prob_covid", "in_distribution", "ood_score"]
    assert all(row["in_distribution"] in ("True", "False") and float(row["ood_score"]) >= 0 for row in rows)


def test_evaluate_on_every_row_of_a_folder_without_patient_ids(trained, tiny_dataset, tmp_path):
    result = invoke(
        "evaluate",
        trained,
        tiny_dataset.root,
        "--out",
        tmp_path,
        "--split",
        "all",
        "--aggregate",
        "max",
        "--n-resamples",
        20,
        "--device",
        "cpu",
    )

    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["slice_level"]["n"] == 48
    assert metrics["patient_level"] is None


@pytest.mark.filterwarnings(
    "ignore::covidct.errors.OptimisticMetricsWarning"
)  # also true here, not the point
def test_evaluate_warns_when_it_must_rebuild_a_split_on_other_data(trained, tiny_dataset, tmp_path):
    """The model was trained on the CSV; the folder holds the same images without its split column."""
    with pytest.warns(
        CovidctWarning, match="differs from the training data, so the rebuilt 'test' split may overlap"
    ):
        result = invoke(
            "evaluate", trained, tiny_dataset.root, "--out", tmp_path, "--n-resamples", 20, "--device", "cpu"
        )

    assert result.exit_code == 0, result.output
    assert "differs from the training data" in (tmp_path / "report.html").read_text(encoding="utf-8")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_a_csv(trained, tiny_dataset, tmp_path):
    inputs = tiny_dataset.paths["COVID"][:2] + tiny_dataset.paths["non-COVID"][:1]

    result = invoke("predict", trained, *inputs, "--out", tmp_path / "x.csv", "--device", "cpu")

    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "x.csv")
    assert list(rows[0]) == PREDICTION_COLUMNS
    assert [row["path"] for row in rows] == [str(path) for path in inputs]
    for row in rows:
        assert 0.0 <= float(row["prob_covid"]) <= 1.0
        assert row["label"] == ("COVID" if float(row["prob_covid"]) >= threshold(trained) else "non-COVID")


def test_predict_writes_json_with_the_notice(trained, tiny_dataset, tmp_path):
    result = invoke(
        "predict", trained, tiny_dataset.paths["COVID"][0], "--out", tmp_path / "x.json", "--device", "cpu"
    )

    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "x.json").read_text())
    assert sorted(written) == ["failures", "notice", "predictions"]
    assert written["notice"] == RESEARCH_USE_STATEMENT
    assert written["failures"] == []
    assert sorted(written["predictions"][0]) == sorted(PREDICTION_COLUMNS)


def test_predict_expands_folders_and_prints_a_table(trained, tiny_dataset):
    result = invoke("predict", trained, tiny_dataset.root / "COVID", "--device", "cpu")

    assert result.exit_code == 0, result.output
    assert all(path.name in result.stdout for path in tiny_dataset.paths["COVID"])
    assert (
        "prob_covid" in result.stdout
        and "prob_COVID" not in result.stdout
        and "prob_non-COVID" not in result.stdout
    )


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_predict_exits_1_on_a_failed_input_and_reports_it(trained, tiny_dataset, tmp_path, suffix):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    good = tiny_dataset.paths["COVID"][0]

    result = invoke("predict", trained, good, broken, "--out", tmp_path / f"x{suffix}", "--device", "cpu")

    assert result.exit_code == 1, result.output
    assert str(broken) in result.stderr and "not a readable PNG, JPEG, BMP or TIFF image" in result.stderr
    assert "Traceback" not in result.output
    if suffix == ".json":
        written = json.loads((tmp_path / "x.json").read_text())
        assert [p["path"] for p in written["predictions"]] == [str(good)]
        assert written["failures"] == [
            {"path": str(broken), "reason": "not a readable PNG, JPEG, BMP or TIFF image"}
        ]
    else:
        assert [row["path"] for row in read_csv(tmp_path / "x.csv")] == [str(good)]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_python_writes_the_file_the_cli_writes(trained, tiny_dataset, tmp_path, suffix):
    from covidct import load_model, write_predictions

    inputs = [*tiny_dataset.paths["COVID"][:2], tiny_dataset.paths["non-COVID"][0]]

    result = invoke("predict", trained, *inputs, "--out", tmp_path / f"cli{suffix}", "--device", "cpu")
    written = write_predictions(
        load_model(trained, device="cpu").predict(inputs), tmp_path / f"python{suffix}"
    )

    assert result.exit_code == 0, result.output
    assert (written.n_predictions, written.failures) == (3, [])
    assert (tmp_path / f"python{suffix}").read_text() == (tmp_path / f"cli{suffix}").read_text()


def test_piped_predict_prints_plain_progress_lines_and_a_table_that_fits(
    trained, tiny_dataset, tmp_path, monkeypatch
):
    deep = (
        tmp_path.joinpath(*(f"folder_{level}" for level in range(12))) / "slice_with_a_rather_long_name.png"
    )
    deep.parent.mkdir(parents=True)
    shutil.copy(tiny_dataset.paths["COVID"][0], deep)
    monkeypatch.chdir(tmp_path / "folder_0")

    result = CliRunner().invoke(
        app,
        ["predict", str(trained), str(deep), str(tiny_dataset.paths["COVID"][1]), "--device", "cpu"],
        env={"COLUMNS": "80"},
    )

    assert result.exit_code == 0, result.output
    assert "━" not in result.stderr
    assert "predicting: 2/2 (100%)" in result.stderr.splitlines()[-1]
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if "slice_with_a_rather_long_name.png" in line)
    assert (
        "…" in row and "folder_0" not in result.stdout
    )  # relative to the working directory, shortened from the left
    assert len(re.findall(r"\b[01]\.\d{4}\b", result.stdout)) == 2  # each image's probability, once


@pytest.fixture
def white_png(tmp_path) -> Path:
    path = tmp_path / "white.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_blank_image_is_labelled_not_ct_without_probabilities(
    trained, tiny_dataset, white_png, tmp_path, suffix
):
    ct_slice = tiny_dataset.paths["COVID"][0]

    result = invoke(
        "predict", trained, ct_slice, white_png, "--out", tmp_path / f"x{suffix}", "--device", "cpu"
    )

    assert result.exit_code == 0, result.output
    rows = (
        read_csv(tmp_path / "x.csv")
        if suffix == ".csv"
        else json.loads((tmp_path / "x.json").read_text())["predictions"]
    )
    ct, white = rows
    empty = "" if suffix == ".csv" else None
    assert (white["label"], white["prob_covid"]) == ("not-ct", empty)
    assert str(white["in_distribution"]) == "False"
    assert re.fullmatch(
        r"does not look like a chest CT slice the model was "
        r"trained on \(OOD score [0-9.]+ > threshold [0-9.]+\)",
        white["message"],
    )
    assert float(white["ood_score"]) > float(ct["ood_score"])
    assert (ct["label"], str(ct["in_distribution"]), ct["message"]) in (
        ("COVID", "True", ""),
        ("non-COVID", "True", ""),
    )


def test_the_table_shows_the_message_instead_of_a_probability(trained, white_png):
    result = invoke("predict", trained, white_png, "--device", "cpu")

    assert result.exit_code == 0, result.output
    assert "not-ct" in result.stdout
    assert "does not look like a chest CT slice the model was trained on (OOD score" in " ".join(
        result.stdout.split()
    )


def test_predict_cam_writes_one_overlay_per_input(trained, tiny_dataset, tmp_path):
    inputs = [tmp_path / "a" / "slice.png", tmp_path / "b" / "slice.png", tiny_dataset.paths["non-COVID"][0]]
    for source, target in zip(tiny_dataset.paths["COVID"][:2], inputs[:2], strict=True):
        target.parent.mkdir()
        shutil.copy(source, target)

    result = invoke(
        "predict",
        trained,
        *inputs,
        "--cam",
        tmp_path / "cams",
        "--out",
        tmp_path / "x.csv",
        "--device",
        "cpu",
    )

    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert names == sorted(["slice_cam.png", "slice_2_cam.png", f"{inputs[2].stem}_cam.png"])
    for name in names:
        with Image.open(tmp_path / "cams" / name) as overlay:
            assert (overlay.format, overlay.mode, overlay.width) == ("PNG", "RGB", 256)
    assert "3 Grad-CAM overlay(s) written to" in result.stdout
    assert [row["path"] for row in read_csv(tmp_path / "x.csv")] == [str(path) for path in inputs]


def test_the_report_has_a_grad_cam_gallery_and_the_ood_share(evaluated):
    out, _ = evaluated
    page = (out / "report.html").read_text(encoding="utf-8")

    assert "<h2>Grad-CAM gallery</h2>" in page
    for kind in ("True positives", "False positives", "False negatives"):
        assert re.search(rf"<h3>{kind} \(\d\)</h3>", page), kind
    assert page.count("<figure class='cam'>") >= 1
    assert re.search(r"Out-of-distribution guard: \d+ of 12 slices \(\d+\.\d%\) were flagged", page)


def _other_classes(tmp_path: Path, dataset) -> Path:
    rows = [
        {"path": str(path), "label": label}
        for label, name in (("A", "COVID"), ("B", "non-COVID"))
        for path in dataset.paths[name][:2]
    ]
    return write_csv(tmp_path / "other.csv", rows)


# (id, arguments from (tmp_path, trained model dir, dataset, weights), message)
ERRORS = [
    (
        "train-missing-data",
        lambda t, m, d, w: ["train", t / "absent", "--out", t / "m", "--weights", w],
        "absent: dataset not found",
    ),
    (
        "train-bad-epochs",
        lambda t, m, d, w: ["train", d.csv, "--out", t / "m", "--epochs", 0, "--weights", w],
        "--epochs must be at least 1; got 0",
    ),
    (
        "train-bad-label-smoothing",
        lambda t, m, d, w: ["train", d.csv, "--out", t / "m", "--label-smoothing", 0.5, "--weights", w],
        r"--label-smoothing must be in \[0, 0.5\); got 0.5",
    ),
    (
        "train-bad-mixup-alpha",
        lambda t, m, d, w: ["train", d.csv, "--out", t / "m", "--mixup-alpha", -1, "--weights", w],
        r"--mixup-alpha must be >= 0 \(0: off\); got -1.0",
    ),
    (
        "train-bad-layer-lr-decay",
        lambda t, m, d, w: ["train", d.csv, "--out", t / "m", "--layer-lr-decay", 0, "--weights", w],
        r"--layer-lr-decay must be in \(0, 1\] \(1: off\); got 0.0",
    ),
    (
        "train-bad-warmup-epochs",
        lambda t, m, d, w: ["train", d.csv, "--out", t / "m", "--warmup-epochs", -1, "--weights", w],
        r"--warmup-epochs must be >= 0 \(0: off\); got -1.0",
    ),
    (
        "train-missing-weights",
        lambda t, m, d, w: ["train", d.csv, "--out", t / "m", "--weights", t / "none.safetensors"],
        "none.safetensors: no such file",
    ),
    (
        "train-missing-column",
        lambda t, m, d, w: ["train", d.csv, "--out", t / "m", "--path-col", "file", "--weights", w],
        "no column 'file'.*--path-col",
    ),
    (
        "predict-out-txt",
        lambda t, m, d, w: ["predict", m, d.paths["COVID"][0], "--out", t / "x.txt"],
        "--out must end in .csv or .json; got 'x.txt'",
    ),
    (
        "predict-batch-size",
        lambda t, m, d, w: ["predict", m, d.paths["COVID"][0], "--batch-size", 0],
        "--batch-size must be at least 1; got 0",
    ),
    (
        "predict-max-pixels",
        lambda t, m, d, w: ["predict", m, d.paths["COVID"][0], "--max-pixels", 0],
        "--max-pixels must be at least 1; got 0",
    ),
    (
        "predict-not-a-model",
        lambda t, m, d, w: ["predict", t, d.paths["COVID"][0]],
        "no model.json; expected a model directory",
    ),
    (
        "predict-cam-a-file",
        lambda t, m, d, w: ["predict", m, d.paths["COVID"][0], "--cam", d.csv],
        r"--cam must be a folder; '.*manifest.csv' is a file",
    ),
    (
        "evaluate-unknown-split",
        lambda t, m, d, w: ["evaluate", m, d.csv, "--out", t / "e", "--split", "holdout"],
        "no rows in split 'holdout'",
    ),
    (
        "evaluate-other-classes",
        lambda t, m, d, w: [
            "evaluate",
            m,
            _other_classes(t, d),
            "--out",
            t / "e",
            "--positive-class",
            "A",
            "--split",
            "all",
        ],
        r"classes \['A', 'B'\] differ from the model's \['COVID', 'non-COVID'\]",
    ),
    (
        "evaluate-positive-class",
        lambda t, m, d, w: ["evaluate", m, d.csv, "--out", t / "e", "--positive-class", "COVID19"],
        r"did you mean 'COVID'\?",
    ),
]


@pytest.mark.parametrize(
    ("arguments", "message"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS]
)
def test_user_errors_print_one_line_and_exit_2(
    trained, tiny_dataset, random_weights, tmp_path, arguments, message
):
    result = invoke(*arguments(tmp_path, trained, tiny_dataset, random_weights))

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # a progress bar that was drawing may come first
    assert [line for line in lines if line.startswith("error")] == lines[-1:], result.stderr
    assert re.search(message, lines[-1].removeprefix("error: ")), lines[-1]
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(trained, tiny_dataset):
    result = invoke("predict", trained, tiny_dataset.paths["COVID"][0], "--device", "cuda")

    assert result.exit_code == 2, f"exit {result.exit_code}: {result.exception!r}"
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: --device cuda was asked for, but no CUDA GPU is available; use --device cpu or auto"
    )
