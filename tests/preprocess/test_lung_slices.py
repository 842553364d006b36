"""select_lung_slices: lung slices of synthetic phantoms and of a real DICOM series,
never air, neck or abdomen."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from volumes import (
    AIR_HU,
    LUNG_HU,
    TISSUE_HU,
    chest_phantom,
    gray_to_hu,
    write_dicom_series,
)

from covidct.errors import InputError
from covidct.io.dicom import read_dicom_series
from covidct.io.images import read_grayscale
from covidct.io.volume import Volume
from covidct.preprocess import lung_slices
from covidct.preprocess.lung_slices import (
    _fill_holes,
    _lung_fraction,
    iter_lung_slice_indices,
    lung_slice_indices,
    select_lung_slices,
)


@pytest.mark.parametrize("size", [48, 512], ids=["pixels", "2x2-blocks"])
@pytest.mark.parametrize(
    "lung_slices", [[2, 3, 4], [0], [], list(range(7))], ids=["middle", "first-only", "none", "all"]
)
def test_only_the_phantom_slices_with_lungs_are_selected(lung_slices, size):
    hu = chest_phantom(7, size, lung_slices=lung_slices)

    selected = select_lung_slices(hu)

    assert selected.dtype == bool and selected.shape == (7,)
    assert np.flatnonzero(selected).tolist() == lung_slices


@pytest.mark.parametrize(
    ("chunk_size", "first_chunk_size", "n_chunks"),
    [(1, None, 9), (2, None, 5), (3, None, 3), (9, None, 1), (100, None, 1), (4, 1, 3), (3, 2, 4), (2, 5, 5)],
)
def test_lung_slices_found_chunk_by_chunk_are_those_of_the_whole_volume(
    chunk_size, first_chunk_size, n_chunks
):
    """Prediction examines a volume a batch at a time (the first one smaller): the chunks must add up to the
    same slices."""
    volume = _volume(chest_phantom(9, 48, lung_slices=[1, 2, 5, 6, 7]))

    chunks = list(iter_lung_slice_indices(volume, chunk_size, first_chunk_size=first_chunk_size))

    assert len(chunks) == n_chunks
    assert np.concatenate(chunks).tolist() == lung_slice_indices(volume).tolist() == [1, 2, 5, 6, 7]


@pytest.mark.parametrize("seed", range(5))
def test_holes_are_filled_as_scipy_fills_them(seed):
    """The labelling shortcut must be ``binary_fill_holes`` exactly: the lung selection may not move."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        mask = rng.random(tuple(rng.integers(1, 40, 2))) < rng.random()
        for candidate in (mask, ndimage.binary_dilation(mask), ndimage.binary_erosion(mask)):
            np.testing.assert_array_equal(_fill_holes(candidate), ndimage.binary_fill_holes(candidate))


def test_the_lung_share_found_on_blocks_is_the_full_resolution_share(monkeypatch):
    """A 512 x 512 slice is examined on 2 x 2 blocks: the lung share may move by a block's edge, no more."""
    slice_hu = chest_phantom(1, 512, lung_slices=[0])[0]
    on_blocks = _lung_fraction(slice_hu)
    monkeypatch.setattr(lung_slices, "EXAMINED_SIZE", 10**6)

    assert _lung_fraction(slice_hu) == pytest.approx(on_blocks, abs=0.005)
    assert 0.2 < on_blocks < 0.5


def test_a_volume_without_lung_is_an_input_error_naming_it():
    with pytest.raises(InputError, match="none of its 4 slices shows lung") as raised:
        lung_slice_indices(_volume(chest_phantom(4, 48, lung_slices=[])))
    assert raised.value.path == "neck.nii.gz"


def _volume(hu: np.ndarray) -> Volume:
    return Volume("neck.nii.gz", "0" * 16, "1" * 16, hu, tuple(f"#{k}" for k in range(len(hu))))


def _slice(size: int = 48) -> np.ndarray:
    return np.full((size, size), AIR_HU, np.float32)


def _disc(hu: np.ndarray, centre: tuple[float, float], radius: float, value: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : hu.shape[0], 0 : hu.shape[1]]
    hu[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = value
    return hu


# (id, one (H, W) HU slice, is it a lung slice)
CASES = [
    ("air-only", _slice(), False),
    ("neck-with-trachea", _disc(_disc(_slice(), (24, 24), 12, TISSUE_HU), (24, 24), 2, LUNG_HU), False),
    (
        "air-around-body-in-lung-range",
        _disc(np.full((48, 48), LUNG_HU, np.float32), (24, 24), 10, TISSUE_HU),
        False,
    ),
    ("body-with-one-lung", _disc(_disc(_slice(), (24, 24), 20, TISSUE_HU), (24, 16), 7, LUNG_HU), True),
    (
        "lung-with-ground-glass",
        _disc(_disc(_disc(_slice(), (24, 24), 20, TISSUE_HU), (24, 24), 12, LUNG_HU), (24, 24), 4, -550.0),
        True,
    ),
]


@pytest.mark.parametrize(("hu", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_lung_means_lung_range_pixels_inside_the_body(hu, expected):
    assert select_lung_slices(hu[None]).tolist() == [expected]


@pytest.mark.shared_data
def test_a_real_series_written_from_shared_slices_keeps_its_lung_slices(shared_data, tmp_path):
    """Four real lung slices (inverse-windowed to HU) between two slices of the same bodies
    with the lungs filled in."""
    pngs = sorted((shared_data / "sars_cov2_ct" / "images" / "COVID").glob("*.png"))[:4]
    real = [
        gray_to_hu(np.asarray(Image.fromarray(read_grayscale(path)).resize((64, 64)), np.float32))
        for path in pngs
    ]
    no_lung = [np.where(slice_hu > -950, np.maximum(slice_hu, TISSUE_HU), slice_hu) for slice_hu in real[:2]]
    files = write_dicom_series(tmp_path / "series", np.stack([no_lung[0], *real, no_lung[1]]), seed=3)

    volume = read_dicom_series(files)

    assert select_lung_slices(volume.hu).tolist() == [False, True, True, True, True, False]
