"""HuWindow and window_hu: the documented lung window, parsing of --window, and the same
values for DICOM and NIfTI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from volumes import gray_to_hu, write_dicom_series, write_nifti

from covidct.errors import OptionError
from covidct.io.dicom import read_dicom_series
from covidct.io.nifti import read_nifti
from covidct.preprocess.transforms import Preprocessing
from covidct.preprocess.window import LUNG_WINDOW, HuWindow, window_hu


@pytest.mark.parametrize(
    ("hu", "expected"), [(-2000, 0.0), (-1350, 0.0), (-600, 0.5), (150, 1.0), (3000, 1.0), (-975, 0.25)]
)
def test_the_lung_window_maps_minus_1350_to_150_hu_onto_0_to_1(hu, expected):
    out = window_hu(np.array([hu], dtype=np.int16))

    assert out.dtype == np.float32
    assert out[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "window"),
    [("-600,1500", LUNG_WINDOW), ("40,400", HuWindow(40, 400)), (" -500 , 1400.5 ", HuWindow(-500, 1400.5))],
)
def test_window_text_parses_and_prints_back(text, window):
    assert HuWindow.parse(text) == window
    assert HuWindow.parse(str(window)) == window


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-600", r"^window must be LEVEL,WIDTH in HU, for example -600,1500; got '-600'$"),
        ("lung", r"^window must be LEVEL,WIDTH in HU, for example -600,1500; got 'lung'$"),
        ("-600,1500,3", r"got '-600,1500,3'"),
        ("-600,0", r"^window width must be positive; got 0$"),
        ("-600,-10", r"^window width must be positive; got -10$"),
    ],
)
def test_a_bad_window_is_refused_with_the_option_named(text, message):
    with pytest.raises(OptionError, match=message):
        HuWindow.parse(text)


def test_the_model_card_default_is_the_lung_window_and_old_cards_load_with_it():
    card = Preprocessing().to_dict()
    old_card = {key: value for key, value in card.items() if key != "hu_window"}

    assert card["hu_window"] == "-600,1500"
    assert Preprocessing.from_dict(old_card).hu_window == LUNG_WINDOW


@pytest.mark.parametrize("window", [LUNG_WINDOW, HuWindow(40, 400), HuWindow(-500, 1400.5)], ids=str)
def test_the_window_is_a_value_in_the_card_object_and_text_in_its_json(window):
    card = Preprocessing(image_size=64, hu_window=window).to_dict()

    assert card["hu_window"] == str(window)
    assert json.loads(json.dumps(card))["hu_window"] == str(window)
    assert Preprocessing.from_dict(json.loads(json.dumps(card))) == Preprocessing(
        image_size=64, hu_window=window
    )


def test_a_card_with_a_broken_window_is_not_a_valid_model_card():
    card = {**Preprocessing().to_dict(), "hu_window": "lung"}

    with pytest.raises(
        ValueError, match=r"^preprocessing.hu_window: window must be LEVEL,WIDTH in HU, .*; got 'lung'$"
    ):
        Preprocessing.from_dict(card)


def test_the_option_error_shows_the_flag_on_the_command_line():
    with pytest.raises(OptionError) as caught:
        HuWindow.parse("lung")

    assert caught.value.as_flags() == "--window must be LEVEL,WIDTH in HU, for example -600,1500; got 'lung'"


def test_dicom_and_nifti_of_the_same_scan_window_to_the_same_slices(tmp_path):
    """Training data and inference inputs may come in either format; the model must see the same pixels."""
    gray = (np.random.default_rng(0).uniform(0, 1, (3, 40, 40)) * 255).round().astype(np.uint8)
    hu = np.round(gray_to_hu(gray))
    hu[:, 0, 0] = -1000.0  # air, so the NIfTI passes the "looks like HU" check

    from_dicom = window_hu(read_dicom_series(write_dicom_series(tmp_path / "s", hu, seed=1)).hu)
    from_nifti = window_hu(read_nifti(write_nifti(tmp_path / "ct.nii.gz", hu)).hu)

    np.testing.assert_allclose(from_dicom, from_nifti, atol=1 / 1500 + 1e-6)  # slope 2 rounds within 1 HU
    np.testing.assert_allclose(from_nifti[:, 1:, 1:], gray[:, 1:, 1:] / 255.0, atol=1 / 1500 + 1e-6)
