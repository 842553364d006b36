"""``covidct predict`` on CT volumes: one row per DICOM series or NIfTI file,
per-slice rows, plots, privacy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import typer.testing
import volumes
from PIL import Image
from typer.testing import CliRunner
from volumes import (
    TRAINING_LIKE_WINDOW,
    chest_phantom,
    training_like_phantom,
    write_dicom_series,
    write_nifti,
)

from covidct.cli.app import app

WIDE = {"COLUMNS": "250"}
# The window the phantom's lung slices look like the tiny model's training slices through; differing
# from the card's, it warns.
PHANTOM_WINDOW = str(TRAINING_LIKE_WINDOW)
LUNG_SLICES = range(2, 7)
SECRETS = {"PatientName": "Doe^Jane", "PatientID": "P-SECRET-42", "PatientBirthDate": "19700101"}


def invoke(*args) -> typer.testing.Result:
    return CliRunner().invoke(app, [str(arg) for arg in args], env=WIDE)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    """A DICOM series folder (carrying made-up patient attributes) and a NIfTI file, 9 slices, lungs on 5."""
    root = tmp_path_factory.mktemp("studies")
    hu = training_like_phantom(9, LUNG_SLICES, covid=True)
    with pytest.MonkeyPatch.context() as patch:
        for keyword, value in SECRETS.items():
            patch.setitem(volumes.PATIENT_ATTRIBUTES, keyword, value)
        write_dicom_series(root / "series_a", hu)
    return {"dicom": root / "series_a", "nifti": write_nifti(root / "case_b.nii.gz", hu)}


def test_each_study_gets_one_row_and_a_plot(model_dir, studies, tmp_path):
    out = tmp_path / "x.csv"

    result = invoke(
        "predict",
        model_dir,
        studies["dicom"],
        studies["nifti"],
        "--out",
        out,
        "--window",
        PHANTOM_WINDOW,
        "--device",
        "cpu",
    )

    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert [(row["kind"], row["path"]) for row in rows] == [
        ("study", str(studies["dicom"])),
        ("study", str(studies["nifti"])),
    ]
    for row in rows:
        assert (row["n_slices_total"], row["n_slices_used"], row["aggregate"], row["in_distribution"]) == (
            "9",
            "5",
            "top 25% mean",
            "True",
        )
        assert 0.0 <= float(row["prob_covid"]) <= 1.0
        assert row["label"] in ("COVID", "non-COVID")
        assert (row["slice"], row["slice_index"]) == ("", "")
        with Image.open(row["plot"]) as plot:
            assert plot.format == "PNG"
    assert sorted(p.name for p in (tmp_path / "x_plots").iterdir()) == sorted(
        Path(row["plot"]).name for row in rows
    )
    assert "2 prediction(s) written to" in result.stdout
    assert "2 study plot(s) written to" in result.stdout


def test_per_slice_rows_carry_their_study_key(model_dir, studies, tmp_path):
    out = tmp_path / "x.json"

    result = invoke(
        "predict",
        model_dir,
        studies["nifti"],
        "--out",
        out,
        "--per-slice",
        "--window",
        PHANTOM_WINDOW,
        "--device",
        "cpu",
    )

    assert result.exit_code == 0, result.output
    study, *slices = json.loads(out.read_text())["predictions"]
    assert study["kind"] == "study"
    assert [row["kind"] for row in slices] == ["slice"] * len(LUNG_SLICES)
    assert [row["slice_index"] for row in slices] == list(LUNG_SLICES)
    assert {row["study_key"] for row in slices} == {study["study_key"]}
    top_25_percent = np.sort([row["prob_covid"] for row in slices])[-2:].mean()
    assert study["prob_covid"] == pytest.approx(top_25_percent)


def test_the_table_lists_studies_and_slices(model_dir, studies):
    result = invoke(
        "predict", model_dir, studies["nifti"], "--per-slice", "--window", PHANTOM_WINDOW, "--device", "cpu"
    )

    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "Studies (probability: top 25% mean of the lung slices used)" in text
    assert f"Slices of {studies['nifti']}" in text  # one slice table per study, named by its path
    assert "5 / 9" in text


def test_a_window_other_than_the_cards_is_warned_about(model_dir, studies, tmp_path):
    with pytest.warns(
        UserWarning,
        match=r"--window -145,1854 differs from the window the model was trained with \(-600,1500\)",
    ):
        result = invoke(
            "predict",
            model_dir,
            studies["nifti"],
            "--out",
            tmp_path / "x.csv",
            "--window",
            PHANTOM_WINDOW,
            "--device",
            "cpu",
        )

    assert result.exit_code == 0, result.output


def _predict_to_json(model_dir, inputs, out):
    """``covidct predict`` of ``inputs`` in the phantom window, on the CPU, to the JSON file ``out``:
    the CLI result and what the file holds (written even when some inputs fail)."""
    result = invoke(
        "predict", model_dir, *inputs, "--out", out, "--window", PHANTOM_WINDOW, "--device", "cpu"
    )
    return result, json.loads(out.read_text())


def test_studies_that_fail_are_reported_and_the_batch_goes_on(model_dir, studies, tmp_path):
    head = write_nifti(tmp_path / "head.nii.gz", chest_phantom(3, 64, ()))
    broken = tmp_path / "broken.nii.gz"
    broken.write_text("not a NIfTI file")

    result, written = _predict_to_json(model_dir, [head, broken, studies["nifti"]], tmp_path / "x.json")

    assert result.exit_code == 1, result.output
    assert [row["path"] for row in written["predictions"]] == [str(studies["nifti"])]
    assert [failure["path"] for failure in written["failures"]] == [str(head), str(broken)]
    assert written["failures"][0]["reason"].startswith("none of its 3 slices shows lung")
    stderr = " ".join(result.stderr.split())
    assert str(head) in stderr and str(broken) in stderr
    assert "Traceback" not in result.output


def test_cam_writes_the_most_suspicious_slice_of_a_study(model_dir, studies, tmp_path):
    result = invoke(
        "predict",
        model_dir,
        studies["nifti"],
        "--cam",
        tmp_path / "cams",
        "--window",
        PHANTOM_WINDOW,
        "--device",
        "cpu",
    )

    assert result.exit_code == 0, result.output
    (overlay,) = (tmp_path / "cams").iterdir()
    assert overlay.name.startswith("case_b_") and overlay.name.endswith("_cam.png")
    assert "1 Grad-CAM overlay(s) written to" in result.stdout


def test_a_bad_window_is_a_one_line_error(model_dir, studies):
    result = invoke("predict", model_dir, studies["nifti"], "--window", "lung")

    assert result.exit_code == 2
    assert "--window must be LEVEL,WIDTH in HU, for example -600,1500; got 'lung'" in result.stderr


def test_no_patient_attribute_reaches_any_output(model_dir, studies, tmp_path):
    outputs = []
    for suffix in (".csv", ".json"):
        out = tmp_path / f"x{suffix}"
        result = invoke(
            "predict",
            model_dir,
            studies["dicom"],
            "--out",
            out,
            "--per-slice",
            "--cam",
            tmp_path / "cams",
            "--plots",
            tmp_path / "plots",
            "--window",
            PHANTOM_WINDOW,
            "--device",
            "cpu",
        )
        assert result.exit_code == 0, result.output
        outputs += [result.stdout.encode(), result.stderr.encode(), out.read_bytes()]
    table = invoke(
        "predict", model_dir, studies["dicom"], "--per-slice", "--window", PHANTOM_WINDOW, "--device", "cpu"
    )
    outputs += [table.stdout.encode(), table.stderr.encode()]
    outputs += [path.read_bytes() for folder in ("cams", "plots") for path in (tmp_path / folder).iterdir()]

    assert len(outputs) == 10
    assert (
        SECRETS["PatientID"].encode() in next(studies["dicom"].iterdir()).read_bytes()
    )  # the files do carry them
    for secret in SECRETS.values():
        for text in (secret, secret.replace("^", " ")):
            assert not any(text.encode() in output for output in outputs), text


def test_a_series_with_an_undecodable_slice_fails_naming_the_file_and_the_batch_goes_on(
    model_dir, studies, tmp_path
):
    """The series' pixels are decoded as its slices are predicted (issue 16): a corrupt file met late
    still fails the whole series, named, and the studies around it are predicted."""
    series = tmp_path / "series_c"
    files = write_dicom_series(series, training_like_phantom(9, LUNG_SLICES, covid=True))
    corrupt = max(files, key=lambda path: pydicom.dcmread(path).ImagePositionPatient[2])
    corrupt.write_bytes(corrupt.read_bytes()[:-300])

    result, written = _predict_to_json(
        model_dir, [studies["nifti"], series, studies["dicom"]], tmp_path / "x.json"
    )

    assert result.exit_code == 1, result.output
    assert [row["path"] for row in written["predictions"]] == [str(studies["nifti"]), str(studies["dicom"])]
    [failure] = written["failures"]
    assert Path(failure["path"]).name == corrupt.name
    assert failure["reason"].startswith("cannot decode pixel data")


def test_max_pixels_refuses_images_and_series_over_the_cap_and_the_batch_goes_on(
    model_dir, studies, tmp_path
):
    small = tmp_path / "small.png"
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(small)  # 1,600 pixels: under the cap
    large = tmp_path / "large.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(large)  # 4,096 pixels: over it

    result = invoke(
        "predict",
        model_dir,
        small,
        large,
        studies["dicom"],
        "--max-pixels",
        2000,
        "--out",
        tmp_path / "x.json",
        "--device",
        "cpu",
    )

    assert result.exit_code == 1, result.output
    written = json.loads((tmp_path / "x.json").read_text())
    assert [row["path"] for row in written["predictions"]] == [str(small)]
    reasons = {Path(failure["path"]).name: failure["reason"] for failure in written["failures"]}
    assert reasons["large.png"] == "image is 64x64 pixels, over the 2,000-pixel limit"
    assert [reason for name, reason in reasons.items() if name != "large.png"] == [
        "slices are 64x64 pixels, over the 2,000-pixel limit"
    ]
