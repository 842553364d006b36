"""prepare_slice: one pipeline for every path; each site step switches on its own;
old cards change nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from covidct.data.dataset import decode_slices
from covidct.io.images import read_grayscale
from covidct.preprocess.augment import Export, export_as
from covidct.preprocess.pipeline import prepare_hu_slices, prepare_slice
from covidct.preprocess.transforms import Preprocessing, normalize, resize_gray
from covidct.preprocess.window import LUNG_WINDOW, HuWindow

SITE_STEPS = ("crop_field", "remove_annotations", "standardise_intensity", "fill_padding", "circular_field")
SIZE = 32


def _small_body_with_letter() -> np.ndarray:
    """A 128 px figure: a dim oval body in the middle third, dark lungs, and a bright letter in a corner."""
    yy, xx = np.mgrid[0:128, 0:128] / 128
    gray = np.full((128, 128), 0.05, np.float32)
    gray[((xx - 0.5) / 0.2) ** 2 + ((yy - 0.5) / 0.15) ** 2 <= 1] = 0.5
    gray[((xx - 0.45) / 0.05) ** 2 + ((yy - 0.5) / 0.08) ** 2 <= 1] = 0.15
    gray[4:14, 4:14] = 1.0
    return gray


@pytest.mark.parametrize(
    "gray",
    [
        pytest.param(np.zeros((40, 50), np.float32), id="blank"),
        pytest.param(np.ones((40, 50), np.float32), id="all-bright"),
        pytest.param(np.random.default_rng(0).random((40, 50), dtype=np.float32), id="noise"),
        pytest.param(_small_body_with_letter(), id="figure"),
    ],
)
@pytest.mark.parametrize("steps", [(), SITE_STEPS], ids=["all-off", "all-on"])
def test_prepare_slice_always_returns_a_square_float32_slice_in_unit_range(gray, steps):
    result = prepare_slice(gray, Preprocessing(image_size=SIZE, **dict.fromkeys(steps, True)))
    assert result.shape == (SIZE, SIZE) and result.dtype == np.float32
    assert 0.0 <= result.min() and result.max() <= 1.0


def test_with_every_step_off_prepare_slice_is_the_plain_resize():
    gray = _small_body_with_letter()
    assert np.array_equal(prepare_slice(gray, Preprocessing(image_size=SIZE)), resize_gray(gray, SIZE))


@pytest.mark.parametrize(
    ("step", "changed"),
    [
        # what each step alone does to the figure: the crop shrinks the black air, the annotation step
        # blanks the corner letter, the intensity step stretches the dim body to white
        pytest.param(
            "crop_field", lambda off, on: (on < 0.1).mean() < (off < 0.1).mean() - 0.2, id="crop_field"
        ),
        pytest.param(
            "remove_annotations", lambda off, on: off[2, 2] > 0.9 and on[2, 2] < 0.1, id="remove_annotations"
        ),
        pytest.param(
            "standardise_intensity",
            lambda off, on: on[16, 20] > off[16, 20] + 0.3,
            id="standardise_intensity",
        ),
        # on a gray-padded export (padding 0.4 outside a circle), the padding turns to the air inside it
        pytest.param(
            "fill_padding", lambda off, on: 0.35 < off[0, 0] < 0.45 and on[0, 0] < 0.1, id="fill_padding"
        ),
        # on a tight crop (tissue into the corners, dark lungs), the corners turn to the lungs' air level and
        # the middle stays
        pytest.param(
            "circular_field",
            lambda off, on: off[0, 0] > 0.45 and on[0, 0] < 0.15 and on[16, 16] == pytest.approx(off[16, 16]),
            id="circular_field",
        ),
    ],
)
def test_each_site_step_switches_on_alone(step, changed):
    gray = _small_body_with_letter()
    if step == "fill_padding":
        gray = export_as(torch.from_numpy(gray), Export(fov_radius=1.0, padding=0.4)).numpy()
    if step == "circular_field":
        gray = np.full_like(gray, 0.5)
        gray[30:100, 20:55] = gray[30:100, 73:108] = 0.1
    off = prepare_slice(gray, Preprocessing(image_size=SIZE))
    on = prepare_slice(gray, Preprocessing(image_size=SIZE, **{step: True}))
    assert changed(off, on)


def test_a_card_written_before_the_site_steps_loads_with_them_off_and_decodes_identically(tiny_dataset):
    """An older model card must give the same network input, hence the same predictions, as before."""
    old_card_section = {
        key: value for key, value in Preprocessing(image_size=SIZE).to_dict().items() if key not in SITE_STEPS
    }
    preprocessing = Preprocessing.from_dict(json.loads(json.dumps(old_card_section)))
    assert [getattr(preprocessing, step) for step in SITE_STEPS] == [False] * len(SITE_STEPS)
    paths = tiny_dataset.paths["COVID"][:3]
    expected = np.stack(
        [resize_gray(np.asarray(Image.open(p).convert("L"), np.float32) / 255, SIZE) for p in paths]
    )
    assert np.allclose(decode_slices(paths, preprocessing).images.astype(np.float32), expected, atol=1e-3)


def test_the_site_steps_round_trip_through_the_card_section():
    preprocessing = Preprocessing(
        image_size=SIZE, crop_field=True, standardise_intensity=True, fill_padding=True
    )
    assert Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict()))) == preprocessing


@pytest.mark.parametrize(
    ("hu", "window", "expected"),
    [
        pytest.param(-1350.0, LUNG_WINDOW, 0.0, id="lung-window-bottom"),
        pytest.param(150.0, LUNG_WINDOW, 1.0, id="lung-window-top"),
        pytest.param(-600.0, LUNG_WINDOW, 0.5, id="lung-window-level"),
        pytest.param(40.0, HuWindow(40, 400), 0.5, id="mediastinal-window-level"),
    ],
)
def test_hu_slices_are_windowed_through_the_card_window_at_the_card_size(hu, window, expected):
    slices = prepare_hu_slices(
        np.full((2, 40, 50), hu, np.float32), Preprocessing(image_size=32, hu_window=window)
    )

    assert (slices.shape, str(slices.dtype)) == ((2, 32, 32), "float16")
    np.testing.assert_allclose(slices.astype(np.float32), expected, atol=1e-3)


def test_normalize_gives_numpy_and_torch_the_same_three_channel_input():
    """The ONNX engines normalise in numpy, training and the torch engine in torch: the network must see
    the same values from both, each channel with its own ImageNet mean and std."""
    gray = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    preprocessing = Preprocessing(image_size=8)

    from_numpy = normalize(gray, preprocessing)
    from_torch = normalize(torch.from_numpy(gray), preprocessing).numpy()

    assert from_numpy.shape == (2, 3, 8, 8) and from_numpy.dtype == np.float32
    np.testing.assert_array_equal(from_numpy, from_torch)
    np.testing.assert_allclose(from_numpy[:, 2], (gray[:, 0] - 0.406) / 0.225, rtol=1e-6)


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["sars_cov2_ct", "ucsd_covid_ct"])
def test_on_real_slices_circular_field_brings_a_gray_padded_export_close_to_the_shipped_slice(
    shared_data, dataset
):
    """Every 40th slice, prepared as shipped and re-exported with a gray-padded circular field: without
    ``circular_field`` the padding (filled to air) blacks out corners the shipped crop shows as tissue; with
    it both are the circle on black, a few percent of zoom apart (measured: mean difference 0.12 -> 0.07 on
    UCSD, 0.21 -> 0.07 on SARS-CoV-2)."""
    grays = [read_grayscale(path) for path in sorted((shared_data / dataset / "images").rglob("*.*"))[::40]]
    padded = [
        export_as(torch.from_numpy(gray), Export(fov_radius=0.95, padding=0.5)).numpy() for gray in grays
    ]

    def differences(circular_field: bool) -> np.ndarray:
        preprocessing = Preprocessing(
            image_size=64,
            crop_field=True,
            remove_annotations=True,
            standardise_intensity=True,
            fill_padding=True,
            circular_field=circular_field,
        )
        return np.array(
            [
                np.abs(prepare_slice(shipped, preprocessing) - prepare_slice(exported, preprocessing)).mean()
                for shipped, exported in zip(grays, padded, strict=True)
            ]
        )

    with_circle, without = differences(True), differences(False)
    assert with_circle.mean() < 0.6 * without.mean()
    assert np.median(with_circle) < 0.08
