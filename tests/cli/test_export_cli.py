"""``covidct export`` and ``covidct predict --engine``: the real typer app on the tiny exported model."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidct.cli.app import app
from covidct.model.checkpoint import file_sha256

WIDE = {"COLUMNS": "250"}


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args], env=WIDE)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def link_model(onnx_model_dir: Path, target: Path, *names: str) -> Path:
    target.mkdir()
    for name in ("model.json", "model.safetensors", "ood.safetensors", *names):
        (target / name).symlink_to(onnx_model_dir / name)
    return target


def test_export_help_names_its_options():
    result = invoke("export", "--help")

    assert result.exit_code == 0, result.output
    assert all(
        option in result.stdout
        for option in ("--format", "--int8", "--out", "--calibration", "--calibration-slices")
    )


def test_export_to_another_file_leaves_the_model_directory_alone(onnx_model_dir, tmp_path):
    model_dir = link_model(onnx_model_dir, tmp_path / "model")
    card_before = (onnx_model_dir / "model.json").read_bytes()
    out = tmp_path / "exports" / "custom.onnx"

    result = invoke("export", model_dir, "--format", "onnx", "--out", out)

    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"fp32 ONNX model written to {out}" in text and f"sha256 and settings: {out}.json" in text
    assert json.loads((tmp_path / "exports" / "custom.onnx.json").read_text())["sha256"] == file_sha256(out)
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "model.json",
        "model.safetensors",
        "ood.safetensors",
    ]
    assert (onnx_model_dir / "model.json").read_bytes() == card_before


@pytest.mark.parametrize(
    ("engine", "suffix", "tolerance"), [("onnx", ".csv", 0.02), ("onnx-int8", ".json", 0.1)]
)
def test_predict_with_an_onnx_engine_matches_the_torch_engine(
    onnx_model_dir, tiny_dataset, tmp_path, engine, suffix, tolerance
):
    inputs = tiny_dataset.paths["COVID"][:2] + tiny_dataset.paths["non-COVID"][:2]
    reference = invoke("predict", onnx_model_dir, *inputs, "--out", tmp_path / "torch.csv", "--device", "cpu")
    assert reference.exit_code == 0, reference.output

    result = invoke(
        "predict",
        onnx_model_dir,
        *inputs,
        "--engine",
        engine,
        "--out",
        tmp_path / f"x{suffix}",
        "--device",
        "cpu",
    )

    assert result.exit_code == 0, result.output
    assert f"4 prediction(s) written to {tmp_path / f'x{suffix}'}" in " ".join(result.stdout.split())
    rows = (
        read_csv(tmp_path / "x.csv")
        if suffix == ".csv"
        else json.loads((tmp_path / "x.json").read_text())["predictions"]
    )
    expected = {row["path"]: float(row["prob_covid"]) for row in read_csv(tmp_path / "torch.csv")}
    assert [row["path"] for row in rows] == [str(path) for path in inputs]
    assert {row["path"]: float(row["prob_covid"]) for row in rows} == pytest.approx(expected, abs=tolerance)


def test_predict_streams_a_folder_into_the_csv_in_walk_order(onnx_model_dir, tiny_dataset, tmp_path):
    result = invoke(
        "predict",
        onnx_model_dir,
        tiny_dataset.root,
        "--engine",
        "onnx",
        "--batch-size",
        5,
        "--out",
        tmp_path / "all.csv",
    )

    assert result.exit_code == 0, result.output
    paths = [row["path"] for row in read_csv(tmp_path / "all.csv")]
    assert paths == [
        str(p) for name in ("COVID", "non-COVID") for p in sorted(tiny_dataset.paths[name])
    ]  # 48 images in 10 batches
    assert re.search(
        r"skipped .*manifest.csv: not an image file type \(.csv\)", " ".join(result.stderr.split())
    )


@pytest.mark.parametrize(
    ("engine", "command"), [("onnx", "--format onnx"), ("onnx-int8", "--format onnx --int8")]
)
def test_predict_with_an_engine_that_was_not_exported_names_the_export_command(
    onnx_model_dir, tiny_dataset, tmp_path, engine, command
):
    model_dir = link_model(onnx_model_dir, tmp_path / "model")

    result = invoke("predict", model_dir, tiny_dataset.paths["COVID"][0], "--engine", engine)

    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: {model_dir}: no {'model.int8.onnx' if 'int8' in engine else 'model.onnx'} "
        f"for --engine {engine}; create it with 'covidct export {model_dir} {command}'"
    )


def test_evaluate_measures_the_engine_that_predict_deploys(onnx_model_dir, tiny_dataset, tmp_path):
    """``evaluate --engine onnx-int8`` scores each slice as ``predict --engine onnx-int8`` does."""
    options = ["--n-resamples", 20, "--device", "cpu", "--engine", "onnx-int8"]
    evaluated = invoke("evaluate", onnx_model_dir, tiny_dataset.csv, "--out", tmp_path / "eval", *options)
    scored = read_csv(tmp_path / "eval" / "predictions.csv")
    paths = [row["path"] for row in scored]
    predicted = invoke("predict", onnx_model_dir, *paths, "--out", tmp_path / "p.csv", *options[-2:])

    assert evaluated.exit_code == 0 and predicted.exit_code == 0, evaluated.output + predicted.output
    # A slice the guard flags has no probability in predict's file; evaluate still scores it.
    predicted_rows = read_csv(tmp_path / "p.csv")
    by_path = {row["path"]: float(row["prob_covid"]) for row in predicted_rows if row["prob_covid"]}
    assert len(by_path) >= len(scored) // 2
    evaluated_prob = {row["path"]: float(row["prob_covid"]) for row in scored if row["path"] in by_path}
    assert evaluated_prob == pytest.approx(by_path, abs=1e-5)
    assert "Scored by the onnx-int8 engine" in (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
