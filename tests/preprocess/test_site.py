"""Site steps: body found on both framings, marks outside the body blanked, findings inside never touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from covidct.io.images import read_grayscale
from covidct.preprocess import site
from covidct.preprocess.augment import Export, export_as
from covidct.preprocess.site import (
    crop_to_field,
    fill_padding,
    find_body,
    otsu_thresholds,
    remove_annotations,
    standardise_intensity,
)

SIZE = 96


def _whole_body_figure() -> np.ndarray:
    """A UCSD-like figure: an oval body on black air, two dark lungs with a bright
    opacity, a letter in a corner."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    gray = np.full((SIZE, SIZE), 0.02, np.float32)
    body = ((xx - 0.5) / 0.3) ** 2 + ((yy - 0.55) / 0.25) ** 2 <= 1
    gray[body] = 0.7
    for centre in (0.4, 0.6):
        gray[((xx - centre) / 0.08) ** 2 + ((yy - 0.55) / 0.15) ** 2 <= 1] = 0.1
    gray[52:56, 36:40] = 0.6  # an opacity inside the left lung
    gray[3:9, 3:9] = 1.0  # a burned-in letter in the corner
    return gray


def _tight_crop() -> np.ndarray:
    """A SARS-like tight crop: bright tissue everywhere but two lungs that run off
    the left and right edges."""
    gray = np.full((SIZE, SIZE), 0.9, np.float32)
    gray[20:80, 0:40] = 0.25
    gray[20:80, 56:SIZE] = 0.25
    gray[45:50, 5:10] = 0.8  # a vessel or opacity in the lung that touches the edge
    return gray


@pytest.mark.parametrize(
    ("gray", "expected_found"),
    [
        pytest.param(np.zeros((SIZE, SIZE), np.float32), False, id="blank"),
        pytest.param(np.ones((SIZE, SIZE), np.float32), False, id="all-bright"),
        pytest.param(
            np.where(np.arange(SIZE * SIZE).reshape(SIZE, SIZE) == 7, 1.0, 0.0).astype(np.float32),
            False,
            id="one-bright-pixel",
        ),
        pytest.param(_whole_body_figure(), True, id="whole-body-figure"),
        pytest.param(_tight_crop(), True, id="tight-crop"),
    ],
)
def test_find_body_falls_back_to_the_whole_image_when_nothing_is_body_like(gray, expected_found):
    body = find_body(gray)
    assert body.found is expected_found
    assert body.hull.shape == gray.shape and body.hull.dtype == bool
    if not expected_found:
        assert body.box == (0, SIZE, 0, SIZE)


def test_find_body_boxes_the_oval_and_leaves_out_the_letter():
    top, bottom, left, right = find_body(_whole_body_figure()).box
    # The oval spans rows 0.30-0.80 and columns 0.20-0.80 of the image; the letter sits at rows/columns 3-8.
    assert (top, left) > (20, 15)
    assert abs(bottom - 0.8 * SIZE) <= 3 and abs(right - 0.8 * SIZE) <= 3


def test_a_large_slice_is_searched_at_reduced_resolution_and_boxed_as_at_full(monkeypatch):
    """A 4x larger copy of the figure is searched on every 4th pixel (24 a side here, 256 for a 512 px
    slice): the same body, its box and hull scaled back to the slice, the letter still out."""
    monkeypatch.setattr(site, "_EXAMINED_SIZE", SIZE // 4)
    small = _whole_body_figure()
    large = small.repeat(4, axis=0).repeat(4, axis=1)
    body, reference = find_body(large), find_body(small)
    assert body.found and body.hull.shape == large.shape
    assert np.abs(np.subtract(body.box, np.multiply(reference.box, 4))).max() <= 4
    assert not body.hull[12:36, 12:36].any()  # the letter (rows and columns 3-8 of the small figure)
    assert np.mean(body.hull == reference.hull.repeat(4, axis=0).repeat(4, axis=1)) > 0.99


def test_crop_to_field_keeps_the_body_with_a_small_margin():
    gray = _whole_body_figure()
    crop, hull = crop_to_field(gray, find_body(gray))
    assert crop.shape == hull.shape
    assert 0.45 * SIZE <= crop.shape[0] <= 0.6 * SIZE and 0.58 * SIZE <= crop.shape[1] <= 0.7 * SIZE


def test_remove_annotations_blanks_the_letter_and_keeps_the_opacity():
    gray = _whole_body_figure()
    cleaned = remove_annotations(gray, find_body(gray))
    assert cleaned[3:9, 3:9].max() == pytest.approx(0.02)
    assert np.array_equal(cleaned[20:, 20:], gray[20:, 20:])


def test_remove_annotations_never_touches_lungs_that_run_off_the_edge():
    gray = _tight_crop()
    assert np.array_equal(remove_annotations(gray, find_body(gray)), gray)


def test_standardise_intensity_maps_the_field_percentiles_to_0_and_1():
    rng = np.random.default_rng(0)
    gray = rng.uniform(0.3, 0.6, (SIZE, SIZE)).astype(np.float32)
    gray[20, 20] = 0.45
    field = np.zeros_like(gray, dtype=bool)
    field[10:80, 10:80] = True
    low, high = np.percentile(gray[field], [1, 99])
    result = standardise_intensity(gray, field)
    assert result.dtype == np.float32
    assert np.percentile(result[field], [1, 99]) == pytest.approx([0.0, 1.0], abs=1e-5)
    assert result[20, 20] == pytest.approx((0.45 - low) / (high - low), abs=1e-5)


def test_standardise_intensity_leaves_a_flat_field_unchanged():
    gray = np.full((SIZE, SIZE), 0.4, np.float32)
    assert np.array_equal(standardise_intensity(gray, np.ones_like(gray, dtype=bool)), gray)


@pytest.mark.parametrize(
    ("gray", "expected"),
    [
        pytest.param(np.full((8, 8), 0.5, np.float32), None, id="flat"),
        pytest.param(
            np.repeat(np.array([0.1, 0.8], np.float32), 32).reshape(8, 8),
            ((0.1, 0.8), (0.1, 0.8)),
            id="two-levels",
        ),
        pytest.param(
            np.repeat(np.array([0.0, 0.3, 0.3, 0.9], np.float32), 16).reshape(8, 8),
            ((0.0, 0.3), (0.3, 0.9)),
            id="air-tissue-contrast",
        ),
    ],
)
def test_otsu_thresholds_separate_three_levels_or_return_none(gray, expected):
    thresholds = otsu_thresholds(gray)
    if expected is None:
        assert thresholds is None
    else:
        assert all(
            low < threshold <= high for threshold, (low, high) in zip(thresholds, expected, strict=True)
        )


def test_a_soft_tissue_window_keeps_the_whole_body_not_just_the_bright_heart():
    """UCSD CT_NonCOVID/117.png-like: black air, grey body and lungs, a small bright contrast-filled heart."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    gray = np.zeros((SIZE, SIZE), np.float32)
    gray[((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1] = 0.3
    gray[((xx - 0.5) / 0.08) ** 2 + ((yy - 0.5) / 0.08) ** 2 <= 1] = 0.9
    top, bottom, left, right = find_body(gray).box
    assert (right - left) >= 0.75 * SIZE and (bottom - top) >= 0.55 * SIZE


def _exported(gray: np.ndarray, export: Export) -> np.ndarray:
    return export_as(torch.from_numpy(gray), export).numpy()


# The external-hospital look: a window twice as wide (air gray, not black), gray padding outside the field.
WIDE_GRAY_PADDED = Export(contrast=0.5, fov_radius=1.0, padding=0.5)


@pytest.mark.parametrize("padding", [0.3, 0.5, 0.8])
def test_fill_padding_lets_find_body_box_the_body_again_in_a_gray_padded_wide_window_export(padding):
    gray = _whole_body_figure()
    exported = _exported(gray, Export(contrast=0.5, fov_radius=1.0, padding=padding))
    # the padding is called body: nothing would be cropped
    assert find_body(exported).box == (0, SIZE, 0, SIZE)
    filled, frame = fill_padding(exported)
    assert frame[0, 0] and not frame[SIZE // 2, SIZE // 2]
    # the air around the body reaches the frame too, but above and below the body: it stays out of the box
    assert np.abs(np.subtract(find_body(filled, frame).box, find_body(gray).box)).max() <= 2
    inside = ~np.isclose(exported, padding, atol=3 / 255)
    assert np.array_equal(filled[inside], exported[inside])  # only the padding changes
    assert np.isclose(filled[0, 0], exported[inside].min(), atol=0.01)  # to the air level inside the field


def test_fill_padding_fills_noisy_padding_whole_not_speckled():
    """Like SARS-CoV-2 ``Covid (540).png``: light-gray padding, specks of noise beyond the flat tolerance."""
    exported = _exported(_whole_body_figure(), Export(contrast=0.5, fov_radius=1.0, padding=0.8))
    padding = np.isclose(exported, 0.8)
    # specks away from the field's edge (a speck touching the field joins it), none on the corners
    away = ~ndimage.binary_dilation(~padding, iterations=3)
    specks = away & (np.random.default_rng(0).random(exported.shape) < 0.05)
    specks[0, 0] = specks[0, -1] = specks[-1, 0] = specks[-1, -1] = False
    exported[specks] = 0.7
    filled, _ = fill_padding(exported)
    assert np.ptp(filled[padding]) == 0 and filled[padding][0] < 0.3


def _chest_crop() -> np.ndarray:
    """A SARS-like tight crop: a ring of chest wall around two lungs beside the mediastinum."""
    gray = np.full((SIZE, SIZE), 0.9, np.float32)
    gray[16:80, 12:42] = 0.1
    gray[16:80, 54:84] = 0.1
    gray[44:48, 14:18] = 0.6  # an opacity in the left lung's outer half
    return gray


@pytest.mark.parametrize("fov_radius", [0.95, 0.85])
def test_a_field_of_view_that_cuts_into_a_tight_crop_keeps_the_lungs_in_the_box(fov_radius):
    """The circle cuts the ring of chest wall into pieces and opens the lungs onto the frame: the pieces and
    the lungs are body, so the box spans the field and the hull holds the lungs (and the opacity)."""
    exported = _exported(_chest_crop(), Export(fov_radius=fov_radius, padding=0.5))
    filled, padding = fill_padding(exported)
    field_rows, field_cols = np.flatnonzero((~padding).any(axis=1)), np.flatnonzero((~padding).any(axis=0))

    cut = find_body(filled, padding)

    top, bottom, left, right = cut.box
    assert right - left >= 0.9 * len(field_cols) and bottom - top >= 0.9 * len(field_rows)
    assert cut.hull[44:48, 14:18].all()
    # without the frame the box shrinks towards the mediastinum and the hull leaves the opacity out
    uncut = find_body(filled)
    assert uncut.box[3] - uncut.box[2] < 0.7 * len(field_cols) and not uncut.hull[44:48, 14:18].any()


def test_tissue_at_the_padding_level_that_joins_the_frame_keeps_its_gray():
    """A piece of chest wall within JPEG error of the padding's level, where the circle cuts it: the flat
    region runs into it, but it lies inside the field's ellipse, so it is not filled with air."""
    gray = _chest_crop()
    gray[40:56, 0:12] = 0.5 + 2 / 255
    exported = _exported(gray, Export(fov_radius=0.95, padding=0.5))
    # the piece of wall inside the circle, but for the pixels within ~2 px of it (a noisy edge is frame)
    axis = np.linspace(-1.0, 1.0, SIZE)
    wall = np.zeros_like(exported, dtype=bool)
    wall[40:56, 0:12] = True
    wall &= np.hypot(axis[:, None], axis[None, :]) <= 0.95 - 0.05
    assert wall.sum() > 50

    filled, padding = fill_padding(exported)

    assert padding[0, 0] and not padding[wall].any()
    assert np.array_equal(filled[wall], exported[wall])


def _flat_backed_figure() -> np.ndarray:
    """A whole-body figure whose back is flat (no ellipse), on air a little brighter than the lungs."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    gray = np.full((SIZE, SIZE), 0.06, np.float32)
    gray[(((xx - 0.5) / 0.42) ** 2 + ((yy - 0.6) / 0.45) ** 2 <= 1) & (yy <= 0.85)] = 0.7
    for centre in (0.35, 0.65):
        gray[((xx - centre) / 0.1) ** 2 + ((yy - 0.55) / 0.17) ** 2 <= 1] = 0.0
    return gray


def test_gray_air_around_a_figure_exported_with_a_wide_window_is_not_padding():
    """The air turns flat gray and holds every corner, and the lungs are darker: like padding, but what it
    leaves is the body's outline, not a field of view's ellipse. Taken for padding, ``find_body`` kept
    whatever touches it (the table, letters) and the hull grew."""
    exported = _exported(_flat_backed_figure(), Export(contrast=0.5))
    level = np.float32(exported[0, 0])
    assert site._flat_frame(exported, level, 3 / 255) is not None  # the frame candidate exists

    filled, padding = fill_padding(exported)

    assert padding is None and np.array_equal(filled, exported)


@pytest.mark.parametrize(
    "gray",
    [
        pytest.param(_whole_body_figure(), id="whole-body-figure-on-black"),
        pytest.param(_tight_crop(), id="tight-crop"),
        pytest.param(
            _exported(_whole_body_figure(), Export(fov_radius=1.0, padding=0.0)), id="black-padding"
        ),
        pytest.param(
            np.where(_tight_crop() > 0.5, 1.0, 0.25).astype(np.float32), id="saturated-tissue-at-the-edges"
        ),
        pytest.param(np.zeros((SIZE, SIZE), np.float32), id="blank"),
    ],
)
def test_fill_padding_leaves_slices_without_gray_padding_unchanged(gray):
    filled, padding = fill_padding(gray)
    assert padding is None and np.array_equal(filled, gray)


@pytest.mark.parametrize(("above_air", "is_filled"), [(3, False), (6, True)])
def test_fill_padding_fills_a_frame_only_when_it_is_brighter_than_the_air_inside(above_air, is_filled):
    """Padding within 4 gray levels of the air inside the field is black padding: nothing to fill."""
    gray = _whole_body_figure()
    air = float(gray.min())
    exported = _exported(gray, Export(fov_radius=1.0, padding=air + above_air / 255))

    filled, padding = fill_padding(exported)

    assert np.array_equal(filled, exported) is not is_filled and (padding is not None) is is_filled
    assert filled[0, 0] == pytest.approx(air if is_filled else air + above_air / 255, abs=1e-6)


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["sars_cov2_ct", "ucsd_covid_ct"])
def test_on_real_slices_fill_padding_keeps_shipped_slices_and_finds_the_field_when_gray_padded(
    shared_data, dataset
):
    """Every 40th slice: as shipped or in a wider window none is filled; re-exported gray-padded, the crop
    leaves padding out."""
    for path in sorted((shared_data / dataset / "images").rglob("*.*"))[::40]:
        gray = read_grayscale(path)
        assert fill_padding(gray)[1] is None, path
        # a wider window alone leaves flat gray air around a tight figure: no field of view, nothing filled
        assert fill_padding(_exported(gray, Export(contrast=0.5)))[1] is None, path
        shipped_top, shipped_bottom, shipped_left, shipped_right = find_body(gray).box
        exported = _exported(gray, Export(contrast=0.5, fov_radius=0.95, padding=0.5))
        top, bottom, left, right = find_body(*fill_padding(exported)).box
        height, width = gray.shape
        # the field of view spans 95% of each side; the body box must not reach far past it into the padding,
        # nor lose the lungs where the field cuts into a tight crop (SARS-CoV-2 lost up to half its width)
        assert (bottom - top) <= 0.97 * height and (right - left) <= 0.97 * width, path
        assert (bottom - top) >= 0.8 * (shipped_bottom - shipped_top), path
        assert (right - left) >= 0.8 * (shipped_right - shipped_left), path


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["sars_cov2_ct", "ucsd_covid_ct"])
def test_on_real_slices_the_body_is_found_and_the_crop_never_cuts_into_it(shared_data, dataset):
    """Every 40th slice of each shared dataset: a body is found and the crop keeps most of each side.

    SARS slices are tight chest crops and UCSD slices mostly whole-body figures (one in a soft-tissue
    window, ``CT_NonCOVID/117.png``, was once cropped to its heart); neither should lose lung.
    """
    root = shared_data / dataset
    paths = sorted((root / "images").rglob("*.*"))[::40]
    if dataset == "ucsd_covid_ct":
        paths.append(root / "images" / "CT_NonCOVID" / "117.png")
    for path in paths:
        gray = read_grayscale(path)
        body = find_body(gray)
        crop, _ = crop_to_field(gray, body)
        assert body.found, path
        assert crop.shape[0] >= 0.6 * gray.shape[0] and crop.shape[1] >= 0.6 * gray.shape[1], path


@pytest.mark.parametrize("seed", range(4))
def test_the_fast_steps_match_scipy_and_numpy_exactly(seed):
    """The OpenCV morphology and histogram that replaced scipy's morphology and
    np.histogram give the same arrays (on strided views too: the body search samples every k-th pixel)."""
    from scipy import ndimage

    from covidct.preprocess import site

    rng = np.random.default_rng(seed)
    mask = rng.random((37, 53)) < (0.3 + 0.15 * seed)
    gray = np.round(rng.random((37, 53)) * 255).astype(np.float32) / 255
    gray[0, 0], gray[0, 1] = 1.0, 0.0

    for sampled in (mask, mask[::2, ::3]):
        for iterations in (1, 2, 3):
            eroded, dilated = site._erode(sampled, iterations), site._dilate(sampled, iterations)
            assert np.array_equal(eroded, ndimage.binary_erosion(sampled, iterations=iterations))
            assert np.array_equal(dilated, ndimage.binary_dilation(sampled, iterations=iterations))
    for sampled in (gray, gray[::2, ::3]):
        assert np.array_equal(site._histogram(sampled, 64), np.histogram(sampled, 64, range=(0.0, 1.0))[0])
        assert otsu_thresholds(sampled) == _otsu_by_np_histogram(sampled)


@pytest.mark.parametrize("seed", range(6))
def test_the_sorted_percentiles_match_numpy_exactly(seed):
    """``_percentiles`` gives np.percentile's numbers and types, for the list and the scalar ``q`` the site
    steps pass, on 8-bit levels (many ties), continuous values, one or two values, and with a NaN."""
    from covidct.preprocess.site import _percentiles

    rng = np.random.default_rng(seed)
    size = [1, 2, 3, 1000, 4099, 65537][seed]
    levels = np.round(rng.random(size) * 255).astype(np.float32) / 255
    continuous = rng.normal(0.5, 0.2, size).astype(np.float32)
    with_nan = continuous.copy()
    with_nan[rng.integers(size)] = np.nan
    for values in (levels, continuous, with_nan):
        for q in ([1, 99], [0.5, 99.5], [0, 100], 0.5, 10, 99.9):
            expected = np.percentile(values, q)
            got = _percentiles(values.copy(), q)
            assert type(got) is type(expected) and got.dtype == expected.dtype, q
            np.testing.assert_array_equal(got, expected)


def _otsu_by_np_histogram(gray: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """The three-class Otsu thresholds as they were computed before issue 16, from ``np.histogram``."""
    histogram, edges = np.histogram(gray, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    share = histogram / histogram.sum()
    weight, moment = np.cumsum(share), np.cumsum(share * centres)
    low, high = np.triu_indices(bins - 1, 1)
    weights = (weight[low], weight[high] - weight[low], 1.0 - weight[high])
    moments = (moment[low], moment[high] - moment[low], moment[-1] - moment[high])
    valid = np.all([w > 1e-12 for w in weights], axis=0)
    between = np.where(
        valid, sum(m**2 / np.where(valid, w, 1.0) for m, w in zip(moments, weights, strict=True)), -1.0
    )
    best = int(np.argmax(between))
    return float(edges[low[best] + 1]), float(edges[high[best] + 1])
