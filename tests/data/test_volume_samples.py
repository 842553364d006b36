"""Manifest rows naming CT volumes (DICOM series, DICOM files, NIfTI): each lung slice
becomes a sample of its row.

Ends with `covidct train` and `covidct evaluate` on such a manifest (tiny 64 px model, one epoch,
random start weights), so DICOM and NIfTI training data is checked through the real commands.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import write_csv
from typer.testing import CliRunner
from volumes import chest_phantom, write_dicom_series, write_nifti

from covidct.cli.app import app
from covidct.data.dataset import decode_slices
from covidct.data.manifest import read_manifest
from covidct.preprocess.pipeline import prepare_slice
from covidct.preprocess.transforms import Preprocessing
from covidct.preprocess.window import HuWindow, window_hu

LUNG_SLICES = [1, 2, 3]
PREPROCESSING = Preprocessing(image_size=64)


def patient_volume(seed: int, *, is_covid: bool) -> np.ndarray:
    """(5, 64, 64) HU: lungs on slices 1-3; COVID lungs carry ground-glass blobs (-300 HU)."""
    hu = chest_phantom(5, 64, lung_slices=LUNG_SLICES, seed=seed)
    if is_covid:
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:64, 0:64]
        for index in LUNG_SLICES:
            for _ in range(3):
                cy, cx = rng.integers(24, 40), rng.choice([rng.integers(14, 24), rng.integers(40, 50)])
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
                hu[index][blob & (hu[index] < -700)] = -300.0
    return hu


def write_volume(root, name: str, hu: np.ndarray, kind: str, seed: int):
    """Write ``hu`` as a DICOM series folder, a multi-frame DICOM file or a NIfTI file;
    return the manifest path."""
    if kind == "series":
        write_dicom_series(root / name, hu, seed=seed)
        return root / name
    if kind == "multiframe":
        return write_dicom_series(root / name, hu, seed=seed, multiframe=True)[0]
    return write_nifti(root / f"{name}.nii.gz", hu)


def test_each_lung_slice_of_a_volume_is_a_sample_of_its_row(tmp_path):
    hu = patient_volume(0, is_covid=True)
    no_lung_file = write_dicom_series(tmp_path / "c", hu[:1])[0]
    paths = [
        write_volume(tmp_path, "a", hu, "series", 0),
        write_volume(tmp_path, "b", hu, "nifti", 0),
        no_lung_file,
    ]
    window = HuWindow(-500, 1200)

    decoded = decode_slices(paths, Preprocessing(image_size=64, hu_window=window))

    assert decoded.indices.tolist() == [0, 0, 0, 1, 1, 1]
    assert [(f.path, f.reason.split(";")[0]) for f in decoded.failures] == [
        (
            str(paths[2]),
            "none of its 1 slices shows lung (too few pixels in the lung HU range inside the body)",
        )
    ]
    expected = [prepare_slice(window_hu(hu[k], window), Preprocessing(image_size=64)) for k in LUNG_SLICES]
    np.testing.assert_allclose(decoded.images[3:].astype(np.float32), np.stack(expected), atol=2e-3)  # fp16


def test_a_class_folder_of_volumes_gives_one_row_per_nifti_file_and_per_dicom_folder(tmp_path):
    for label, is_covid in (("COVID", True), ("non-COVID", False)):
        write_volume(tmp_path / label, "p1", patient_volume(1, is_covid=is_covid), "series", 1)
        write_volume(tmp_path / label, "p2", patient_volume(2, is_covid=is_covid), "nifti", 2)
        write_volume(tmp_path / label / "p3", "mf", patient_volume(3, is_covid=is_covid), "multiframe", 3)

    manifest = read_manifest(tmp_path)

    rows = sorted(
        (s.path.relative_to(tmp_path).as_posix(), manifest.classes[s.label]) for s in manifest.samples
    )
    assert rows == [
        (f"{label}/{name}", label)
        for label in ("COVID", "non-COVID")
        for name in ("p1", "p2.nii.gz", "p3/mf")
    ]


@pytest.fixture(scope="module")
def volume_dataset(tmp_path_factory):
    """8 patients per class in three formats, split 4 train / 2 val / 2 test, plus one
    train row without lung."""
    root = tmp_path_factory.mktemp("volumes")
    rows = []
    for label in ("COVID", "non-COVID"):
        for patient in range(8):
            seed = patient + (100 if label == "COVID" else 0)
            kind = ("series", "multiframe", "nifti")[patient % 3]
            path = write_volume(
                root / label, f"P{patient}", patient_volume(seed, is_covid=label == "COVID"), kind, seed
            )
            split = "train" if patient < 4 else "val" if patient < 6 else "test"
            rows.append(
                {
                    "path": path.relative_to(root).as_posix(),
                    "label": label,
                    "patient_id": f"{label}-{patient}",
                    "split": split,
                }
            )
    write_nifti(root / "abdomen.nii", chest_phantom(3, 64, lung_slices=[]))
    rows.append({"path": "abdomen.nii", "label": "COVID", "patient_id": "X", "split": "train"})
    return write_csv(root / "manifest.csv", rows)


def test_train_and_evaluate_run_on_a_manifest_of_dicom_and_nifti_volumes(
    volume_dataset, random_weights, tmp_path
):
    invoke = CliRunner().invoke
    model_dir = tmp_path / "model"

    trained = invoke(
        app,
        [
            "train",
            str(volume_dataset),
            "--out",
            str(model_dir),
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
            "--window",
            "-550,1400",
        ],
    )

    assert trained.exit_code == 0, trained.output
    assert "abdomen.nii" in trained.output  # the row without lung is reported, not silently dropped
    card = json.loads((model_dir / "model.json").read_text())
    assert card["preprocessing"]["hu_window"] == "-550,1400"

    evaluated = invoke(
        app,
        [
            "evaluate",
            str(model_dir),
            str(volume_dataset),
            "--out",
            str(tmp_path / "eval"),
            "--n-resamples",
            "20",
            "--device",
            "cpu",
        ],
    )

    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["slice_level"]["n"] == 2 * 2 * len(
        LUNG_SLICES
    )  # 2 test patients per class, 3 lung slices each
    assert metrics["patient_level"]["n"] == 4  # the slices of a volume keep their row's patient id


def test_a_bad_window_option_is_refused(volume_dataset, tmp_path):
    result = CliRunner().invoke(
        app, ["train", str(volume_dataset), "--out", str(tmp_path / "m"), "--window", "lung"]
    )

    assert result.exit_code != 0
    assert "--window must be LEVEL,WIDTH in HU, for example -600,1500; got 'lung'" in result.output
