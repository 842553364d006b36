"""``covidct preprocess-preview``: before|after PNG pairs and an index page, failures listed, clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from volumes import chest_phantom, write_dicom_series, write_nifti

from covidct.cli.app import app

WIDE = {"COLUMNS": "250"}
NO_SITE_STEPS = [
    "--no-crop-field",
    "--no-remove-annotations",
    "--no-standardise-intensity",
    "--no-fill-padding",
    "--no-circular-field",
]


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args], env=WIDE)


@pytest.mark.parametrize(
    ("options", "expected_pairs"),
    [
        pytest.param([], 6, id="default-n-takes-all-six"),
        pytest.param(["--n", "4"], 4, id="sample-of-four"),
        pytest.param(
            ["--n", "4", *NO_SITE_STEPS],
            4,
            id="steps-off",
        ),
    ],
)
def test_preview_writes_one_side_by_side_png_per_sampled_slice_and_an_index(
    tiny_dataset, tmp_path, options, expected_pairs
):
    data = tmp_path / "data"
    data.mkdir()
    for path in tiny_dataset.paths["COVID"][:6]:
        (data / path.name).write_bytes(path.read_bytes())
    result = invoke("preprocess-preview", data, "--out", tmp_path / "out", "--image-size", 32, *options)
    assert result.exit_code == 0, result.output
    pairs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pairs) == expected_pairs
    assert Image.open(pairs[0]).size == (32 + 4 + 32, 32)
    index = (tmp_path / "out" / "index.html").read_text()
    assert all(f"src='{pair.name}'" in index for pair in pairs)


def test_preview_after_half_differs_from_before_half_only_when_a_step_is_on(tiny_dataset, tmp_path):
    data = tiny_dataset.paths["COVID"][0]
    halves = {}
    for name, options in (
        ("on", []),
        ("off", NO_SITE_STEPS),
    ):
        assert (
            invoke(
                "preprocess-preview", data, "--out", tmp_path / name, "--image-size", 32, *options
            ).exit_code
            == 0
        )
        pixels = np.asarray(Image.open(next((tmp_path / name).glob("*.png"))), np.int16)
        halves[name] = (pixels[:, :32], pixels[:, 36:])
    assert np.array_equal(*halves["off"])
    assert np.abs(halves["on"][0] - halves["on"][1]).mean() > 5


@pytest.mark.parametrize("circular_field", [False, True], ids=["square", "circular-field"])
def test_preview_with_circular_field_sets_the_corners_of_a_tight_crop_to_the_lungs_air(
    tmp_path, circular_field
):
    tight_crop = np.full((96, 96), 128, np.uint8)  # tissue into every corner, two dark lungs
    tight_crop[20:80, 10:40] = tight_crop[20:80, 56:86] = 20
    Image.fromarray(tight_crop).save(tmp_path / "tight.png")
    options = ["--circular-field"] if circular_field else ["--no-circular-field"]
    result = invoke(
        "preprocess-preview", tmp_path / "tight.png", "--out", tmp_path / "out", "--image-size", 32, *options
    )
    assert result.exit_code == 0, result.output
    after = np.asarray(Image.open(next((tmp_path / "out").glob("*.png"))), np.int16)[:, 36:]
    corners = after[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert bool(corners.max() < 40) is circular_field


def test_preview_samples_the_rows_of_a_csv_manifest(tiny_dataset, tmp_path):
    result = invoke(
        "preprocess-preview", tiny_dataset.csv, "--out", tmp_path / "out", "--image-size", 32, "--n", 5
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 5
    assert str(tiny_dataset.root) in (tmp_path / "out" / "index.html").read_text()


def test_preview_lists_a_file_that_fails_and_goes_on(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.png").write_bytes(tiny_dataset.paths["COVID"][0].read_bytes())
    (data / "broken.png").write_bytes(b"not a png")
    result = invoke("preprocess-preview", data, "--out", tmp_path / "out", "--image-size", 32)
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output and "not a readable PNG" in re.sub(r"\s+", " ", result.output)
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    assert "broken.png" in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.parametrize(
    ("make_data", "options", "message"),
    [
        pytest.param(lambda root: root, [], "no image file or volume found", id="empty-folder"),
        pytest.param(
            lambda root: root / "missing",
            [],
            "missing: not found; expected a folder of CT slice images or volumes, one file or a CSV manifest",
            id="missing",
        ),
        pytest.param(
            lambda root: root,
            ["--n", "0"],
            "Invalid value for '--n': 0 is not in the range x>=1",
            id="n-zero",
        ),
    ],
)
def test_preview_errors_say_what_is_wrong(tmp_path, make_data, options, message):
    result = invoke("preprocess-preview", make_data(tmp_path), "--out", tmp_path / "out", *options)
    assert result.exit_code != 0
    assert re.search(message, re.sub(r"\s+", " ", result.output))


def test_preview_shows_a_dicom_series_and_a_nifti_volume_by_their_middle_lung_slice(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    write_dicom_series(data / "series", chest_phantom(9, 64, lung_slices=range(2, 7)))
    write_nifti(data / "scan.nii.gz", chest_phantom(5, 64, lung_slices=range(5)))
    write_nifti(data / "head.nii.gz", chest_phantom(4, 64, lung_slices=()))
    (data / "slice.png").write_bytes(tiny_dataset.paths["COVID"][0].read_bytes())

    result = invoke("preprocess-preview", data, "--out", tmp_path / "out", "--image-size", 32)

    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    index = re.sub(r"\s+", " ", (tmp_path / "out" / "index.html").read_text())
    assert (
        "series (lung slice 5 of 9)" in index
        and "scan.nii.gz (lung slice 3 of 5)" in index
        and "slice.png" in index
    )
    assert "head.nii.gz" in index and "none of its 4 slices shows lung" in index
