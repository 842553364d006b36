"""Remove what differs between CT sites but is not disease: framing, burned-in marks, window and contrast.

Two public datasets show why this matters: UCSD slices are paper figures showing the whole body on
black air (sometimes with the table, letters and arrows), SARS-CoV-2 slices are tight crops of the
chest in a brighter window. A network trained on one learns that framing and window, and scores the
other worse than chance. Each step here is one function on a (H, W) float32 slice in [0, 1]:

0. ``fill_padding``: a flat gray frame around a circular field of view (a scanner's padding, exported
   gray instead of black) is set to the darkest level inside the field, so the steps below see air there.
1. ``find_body``: Otsu threshold (air vs. body), morphological opening, the largest connected components (the
   body; the same body crop COVID-Net CT uses: Gunraj et al., "COVIDNet-CT", Front. Med. 2020), and where the
   field of view cut into the body, the pieces of chest wall and the lungs it cut open.
2. ``remove_annotations``: bright components outside the body's hull (letters, arrows, the table,
   figure borders) are set to the background.
3. ``crop_to_field``: the bounding box of the body with a margin (none for ``keep_circular_field``).
4. ``keep_circular_field``: everything outside the ellipse inscribed in the crop set to the air level, so a
   slice exported with a circular field of view and one exported without look alike after the crop.
5. ``standardise_intensity``: the field's 1st and 99th percentiles map to 0 and 1.

Every step falls back to the whole image when nothing body-like is found (blank or all-bright slice),
so it never fails on an image that decoded.

Cost: these steps run on every slice, in training and at prediction, and once took five times as long as
decoding the file (issue 16). The morphology is OpenCV's with the cross (what scipy's
``binary_erosion``/``binary_dilation`` compute by default, several times faster), component areas a
``bincount``, the Otsu histogram OpenCV's count of exact bin indices, and the percentiles read off numpy's
sort (``_percentiles``): the results are the same.
The body of a slice of 512 px or more is searched on every k-th pixel (``_EXAMINED_SIZE``): on a 150-slice
series at 512 px, probabilities moved by 0.0008 on average (largest 0.013), and a UCSD fold's validation AUC
from 0.9534 to 0.9539 (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from covidct.preprocess.components import label_components

# A component is kept as body when it holds at least this share of the largest one: the two halves of a
# body split by a dark band stay, letters and the table (a few percent) go.
_KEEP_FRACTION_OF_LARGEST = 0.2
# Below this share of the image, the "body" is noise (a blank slice with a few bright pixels).
_MIN_BODY_FRACTION = 0.02
_OPENING_ITERATIONS = 2
_CROP_MARGIN_FRACTION = 0.03
_LOW_PERCENTILE, _HIGH_PERCENTILE = 1.0, 99.0
_MIN_CONTRAST = 1e-3
# Padding is one gray level (within JPEG error) that covers at least this share of the image border, and
# is brighter than the air inside the field of view by ``_PADDING_ABOVE_AIR`` (black padding needs nothing).
_PADDING_TOLERANCE = 3 / 255
_SAME_LEVEL_TOLERANCE = 0.25 / 255
_MIN_PADDING_BORDER_SHARE = 0.3
_PADDING_ABOVE_AIR = 4 / 255
# A white frame is saturated tissue touching the edge (a narrow window) more often than padding: left alone.
_MAX_PADDING_LEVEL = 0.95
# A frame is padding only when the field it leaves is a (resized) circle: at least this share of the field's
# outline lies within ``_OUTLINE_TOLERANCE`` of the radius (or 1.5 px) of one axis-aligned ellipse. Probed on
# 150 UCSD and 100 SARS-CoV-2 train/val slices re-exported with gray-padded circular fields: 0.97 or more of
# the outline fits (but where tissue at the padding's level joins the flat region; see ``fill_padding``);
# the flat gray air a wide window alone leaves around 14 tight figures: at most 0.56 (BENCHMARKS.md).
_MIN_OUTLINE_ON_ELLIPSE = 0.8
_OUTLINE_TOLERANCE = 0.02
_OUTLINE_TOLERANCE_PX = 1.5
_AIR_PERCENTILE = 0.5
# The body is searched on every k-th pixel of every k-th row, k chosen to leave at least this many a side: a
# 512 x 512 DICOM slice is searched at 256 x 256, a quarter of the work (issue 16), and its hull and box are
# scaled back (the margin of ``crop_to_field`` covers the k - 1 pixels a box edge may move; without the
# margin, for ``keep_circular_field``, the ellipse cuts deeper than that). Most PNG and JPEG slices (under
# 512 px) are searched at full resolution, as before. The same size as the lung selection's
# ``lung_slices.EXAMINED_SIZE`` (blocks there, sampling here), so a series slice is examined at one scale.
_EXAMINED_SIZE = 256
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_CORNERS = ([0, 0, -1, -1], [0, -1, 0, -1])


@dataclass(frozen=True)
class Body:
    """Where the body is in a slice.

    Attributes:
        hull: (H, W) bool, the kept bright components (body tissue) filled row- or column-wise: the body
            with the lungs inside.
        box: (top, bottom, left, right) of the body, end-exclusive; the whole image when ``found`` is False.
        found: False when no body-like region was found and the steps use the whole image.
        bright_threshold: Otsu's upper threshold of the slice (bright structures above
            it); 1.0 when not ``found``.
    """

    hull: np.ndarray
    box: tuple[int, int, int, int]
    found: bool
    bright_threshold: float = 1.0


def fill_padding(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``gray`` with a flat frame outside the field of view set to the air level inside it, and the
    frame ((H, W) bool; None when there is none, and ``gray`` is returned unchanged).

    The frame is the flat region (one gray level, within JPEG error) that holds all four corners, covers
    at least 30% of the border and leaves the centre out, with the specks of noise it surrounds: everything
    but the connected field around the centre. It is what a scanner pads outside its circular
    reconstruction field (12 SARS-CoV-2 training slices show it light gray). Without this, gray padding
    sits between air and tissue in brightness, Otsu's threshold calls it body, and ``crop_to_field``
    keeps the whole image. The air level is the 0.5th percentile inside the field. Returned unchanged: a
    slice without such a frame (tissue that runs off every edge reaches the centre too), or whose frame
    is already at most as dark as the air (black padding) or white (saturated, more likely tissue or a
    figure border than padding), or whose field is no ellipse (``_beyond_field_ellipse``: the flat gray air
    a wide window leaves around a tight figure). Tissue inside the ellipse at the padding's gray level,
    which the flat region reaches through, is not frame and keeps its gray. ``find_body`` takes the frame:
    tissue that touches it was cut by the field.
    """
    corners = gray[_CORNERS]
    level = np.float32(np.median(corners))
    # The air level below is never under the slice's minimum: a frame this close to it (black padding, the
    # common case) is returned now, without the two labellings the answer would otherwise cost.
    if (
        np.ptp(corners) > _PADDING_TOLERANCE
        or level > _MAX_PADDING_LEVEL
        or level - gray.min() < _PADDING_ABOVE_AIR
    ):
        return gray, None
    # Tissue at the padding's level can join the flat region and carve into the field; the same 8-bit level
    # alone seldom joins it, but JPEG-compressed padding is not that flat.
    for tolerance in (_PADDING_TOLERANCE, _SAME_LEVEL_TOLERANCE):
        frame = _flat_frame(gray, level, tolerance)
        if frame is None:
            return gray, None
        beyond_field = _beyond_field_ellipse(~frame)
        if beyond_field is not None:
            break
    else:
        return gray, None
    frame &= beyond_field
    air = np.float32(_percentiles(gray[~frame], _AIR_PERCENTILE))
    if level - air < _PADDING_ABOVE_AIR:
        return gray, None
    filled = gray.copy()
    filled[frame] = air
    return filled, frame


def _flat_frame(gray: np.ndarray, level: np.float32, tolerance: float) -> np.ndarray | None:
    """The frame ``fill_padding`` looks for, flat within ``tolerance`` of ``level``: everything but the field
    around the centre that the flat region holding the corners encloses (specks of noise in the padding are
    not field); None when the flat region reaches the centre or covers too little of the border."""
    height, width = gray.shape
    labels, _ = label_components(np.abs(gray - level) <= tolerance)
    flat = np.isin(labels, labels[_CORNERS])
    if flat[height // 2, width // 2]:
        return None
    field_labels, _ = label_components(~flat)
    frame = field_labels != field_labels[height // 2, width // 2]
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    return None if border.mean() < _MIN_PADDING_BORDER_SHARE else frame


def _beyond_field_ellipse(field: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the pixels beyond the ellipse fitted to the outline of ``field`` (within the fit's
    tolerance of it counts as beyond: a noisy frame's edge), or None when the outline is no ellipse.

    The outline is the first and last field pixel of every row and column, off the image edge (a field of
    view larger than the image is cut by it): tissue at the padding's level that joins the frame carves into
    the field but rarely reaches its outermost pixels. The fit is a least-squares axis-aligned ellipse,
    refitted on the points within tolerance (a few carved-in points would bias it otherwise).
    """
    height, width = field.shape
    has_row, row_first, row_last = _line_ends(field, 1)
    has_col, col_first, col_last = _line_ends(field, 0)
    rows, cols = np.flatnonzero(has_row), np.flatnonzero(has_col)
    if len(rows) < 3 or len(cols) < 3:
        return None
    ys = np.concatenate([rows, rows, col_first[cols], col_last[cols]])
    xs = np.concatenate([row_first[rows], row_last[rows], cols, cols])
    inside = (ys > 0) & (ys < height - 1) & (xs > 0) & (xs < width - 1)
    y, x = 2 * ys[inside] / (height - 1) - 1, 2 * xs[inside] / (width - 1) - 1
    on_outline = np.ones(len(x), dtype=bool)
    for _ in range(5):
        if on_outline.sum() < 5:
            return None
        ellipse = _fit_ellipse(x[on_outline], y[on_outline])
        if ellipse is None:
            return None
        centre_x, centre_y, half_width, half_height = ellipse
        radius_px = min(half_width * (width - 1), half_height * (height - 1)) / 2
        tolerance = max(_OUTLINE_TOLERANCE, _OUTLINE_TOLERANCE_PX / radius_px)
        radius = np.hypot((x - centre_x) / half_width, (y - centre_y) / half_height)
        on_outline = np.abs(radius - 1) <= tolerance
    if on_outline.mean() < _MIN_OUTLINE_ON_ELLIPSE:
        return None
    grid_y, grid_x = np.ogrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    return np.hypot((grid_x - centre_x) / half_width, (grid_y - centre_y) / half_height) > 1 - tolerance


def _fit_ellipse(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float] | None:
    """(centre x, centre y, half width, half height) of the axis-aligned ellipse a x^2 + b y^2 + c x + d y = 1
    nearest the points by least squares; None when the fitted conic is no ellipse (a line, a hyperbola)."""
    (a, b, c, d), *_ = np.linalg.lstsq(np.stack([x * x, y * y, x, y], axis=1), np.ones_like(x), rcond=None)
    if a <= 0 or b <= 0:
        return None
    centre_x, centre_y = -c / (2 * a), -d / (2 * b)
    scale = 1 + a * centre_x**2 + b * centre_y**2
    return float(centre_x), float(centre_y), float(np.sqrt(scale / a)), float(np.sqrt(scale / b))


def find_body(gray: np.ndarray, padding: np.ndarray | None = None) -> Body:
    """Locate the body in a (H, W) float32 slice in [0, 1] (see the module docstring for the method), on
    every k-th pixel of large slices (``_EXAMINED_SIZE``).

    ``padding`` is the frame ``fill_padding`` filled. Tissue touching it is body that the circular field of
    view cut (a tight crop, or a patient wider than the reconstruction circle), kept however small: the cut
    splits the ring of chest wall into pieces, and without this the box shrank to the mediastinum and left
    the lungs out (half of 120 SARS-CoV-2 slices lost over a fifth of their width in a gray-padded export).
    A scanner draws no marks inside its field, so nothing that touches the frame is an annotation.
    """
    height, width = gray.shape
    whole = Body(np.ones_like(gray, dtype=bool), (0, height, 0, width), False)
    k = max(1, min(height, width) // _EXAMINED_SIZE)
    examined = gray[::k, ::k]
    thresholds = otsu_thresholds(examined)
    if thresholds is None:
        return whole
    # The opening removes about the same widths of slice pixels at k = 2: 2 steps at full size, 1 at half.
    iterations = max(1, _OPENING_ITERATIONS // k)
    bright = _dilate(_erode(examined > thresholds[0], iterations), iterations)
    labels, count = label_components(bright)
    if count == 0:
        return whole
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    if areas.max() < _MIN_BODY_FRACTION * examined.size:
        return whole
    is_kept = np.concatenate([[False], areas >= _KEEP_FRACTION_OF_LARGEST * areas.max()])
    if padding is None:
        mask = _members(labels, is_kept)
    else:
        mask = _body_the_field_cut(labels, is_kept, examined <= thresholds[0], padding[::k, ::k], iterations)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    hull = _orthogonal_hull(mask)
    if k > 1:
        hull = hull.repeat(k, axis=0).repeat(k, axis=1)[:height, :width]
    return Body(
        hull,
        (
            int(rows[0]) * k,
            min(height, (int(rows[-1]) + 1) * k),
            int(cols[0]) * k,
            min(width, (int(cols[-1]) + 1) * k),
        ),
        True,
        thresholds[1],
    )


def _members(labels: np.ndarray, is_kept: np.ndarray) -> np.ndarray:
    """``is_kept[labels]``: the pixels of the kept components. One component, as nearly always: a comparison,
    a third of the time of the lookup."""
    kept = np.flatnonzero(is_kept)
    return labels == kept[0] if len(kept) == 1 else is_kept[labels]


def _body_the_field_cut(
    labels: np.ndarray, is_kept: np.ndarray, air: np.ndarray, frame: np.ndarray, opening: int
) -> np.ndarray:
    """The body mask of ``find_body`` where a field of view cut into the body: the kept components, every
    component touching the frame (the opening moved tissue edges ``opening`` pixels back from it) and the
    lungs it cut open."""
    touching = np.unique(labels[_dilate(frame, opening + 1)])
    is_kept = is_kept.copy()
    is_kept[touching[touching > 0]] = True
    mask = _members(labels, is_kept)
    return mask | _lungs_cut_open(air, frame, mask)


def _lungs_cut_open(air: np.ndarray, frame: np.ndarray, body: np.ndarray) -> np.ndarray:
    """The air inside the field that touches the frame beside ``body`` (bool masks of one shape): a lung
    whose chest wall the field of view cut off.

    Beside: its rows centred within the body's rows, its columns on one side of the body's (not across
    them). Air outside a body lies around it, above or below it, and so spans its columns.
    """
    labels, count = label_components(air & ~frame)
    touching = np.zeros(count + 1, dtype=bool)
    touching[labels[_dilate(frame, 1)]] = True
    body_rows, body_cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    rows, cols = np.indices(air.shape)
    flat = labels.ravel()
    sizes = np.maximum(np.bincount(flat, minlength=count + 1), 1)
    centre_row = np.bincount(flat, rows.ravel(), count + 1) / sizes
    first_col, last_col = np.full(count + 1, air.shape[1]), np.full(count + 1, -1)
    np.minimum.at(first_col, flat, cols.ravel())
    np.maximum.at(last_col, flat, cols.ravel())
    is_lung = (
        touching
        & (centre_row >= body_rows[0])
        & (centre_row <= body_rows[-1])
        & ((first_col > body_cols[0]) | (last_col < body_cols[-1]))
    )
    is_lung[0] = False
    return is_lung[labels]


def otsu_thresholds(gray: np.ndarray, bins: int = 64) -> tuple[float, float] | None:
    """Otsu's two thresholds for three classes of ``gray`` in [0, 1] (air, soft tissue, bright),
    or None for a flat image.

    Three classes, not two: in a soft-tissue (mediastinal) window the two-class split falls between
    the tissue and the contrast-filled heart, and the "body" would shrink to the heart. The lower
    threshold separates air (and, in a lung window, aerated lung) from the body in both windows. An
    image with only two grey levels gets the one threshold between them, twice.
    """
    histogram = _histogram(gray, bins)
    edges, centres, (low, high) = _otsu_grid(bins)
    occupied = np.flatnonzero(histogram)
    if len(occupied) < 2:
        return None
    if len(occupied) == 2:
        return (float(edges[occupied[0] + 1]),) * 2
    share = histogram / histogram.sum()
    weight, moment = np.cumsum(share), np.cumsum(share * centres)
    weights = (weight[low], weight[high] - weight[low], 1.0 - weight[high])
    moments = (moment[low], moment[high] - moment[low], moment[-1] - moment[high])
    valid = np.all([w > 1e-12 for w in weights], axis=0)
    between = np.where(
        valid, sum(m**2 / np.where(valid, w, 1.0) for m, w in zip(moments, weights, strict=True)), -1.0
    )
    best = int(np.argmax(between))
    return float(edges[low[best] + 1]), float(edges[high[best] + 1])


def _histogram(gray: np.ndarray, bins: int) -> np.ndarray:
    """``np.histogram(gray, bins, range=(0, 1))[0]`` for ``gray`` in [0, 1] and ``bins`` a power of two up to
    128: gray * bins is exact, so its floor is the bin (1.0 falls in the last bin, as there). Counted by
    OpenCV on uint8 bin indices: a third of the time of numpy's ``bincount`` on a 400 x 400 slice."""
    bin_of = (gray * bins).astype(np.uint8)
    counts = cv2.calcHist([bin_of], [0], None, [bins + 1], [0, bins + 1]).ravel().astype(np.int64)
    counts[bins - 1] += counts[bins]
    return counts[:bins]


@cache
def _otsu_grid(bins: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The bin edges, bin centres and every (low, high) pair of thresholds of ``otsu_thresholds``: the same
    for every slice, computed once (a tenth of the search's time)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return edges, (edges[:-1] + edges[1:]) / 2, np.triu_indices(bins - 1, 1)


def remove_annotations(gray: np.ndarray, body: Body) -> np.ndarray:
    """Return ``gray`` with bright marks outside the body's hull set to the background intensity.

    Burned-in letters, arrows, rulers, the table and figure borders sit outside the body; bright
    structures inside the hull (vessels, opacities: the findings) are never touched. ``body`` is
    ``find_body(gray)``: its upper Otsu threshold says what counts as bright.
    """
    if not body.found:
        return gray
    outside = ~_dilate(body.hull, _OPENING_ITERATIONS)
    if not outside.any():
        return gray
    background = np.float32(_percentiles(gray[outside], 10))
    marks = outside & (gray > body.bright_threshold)
    cleaned = gray.copy()
    cleaned[_dilate(marks, 1) & outside] = background
    return cleaned


def crop_to_field(gray: np.ndarray, body: Body, *, margin: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``gray`` and the body hull to the body's box plus a margin (without ``margin``, the box alone);
    return (crop, hull crop)."""
    height, width = gray.shape
    top, bottom, left, right = body.box
    border = round(_CROP_MARGIN_FRACTION * max(bottom - top, right - left)) if margin else 0
    rows = slice(max(0, top - border), min(height, bottom + border))
    cols = slice(max(0, left - border), min(width, right + border))
    return gray[rows, cols], body.hull[rows, cols]


def keep_circular_field(gray: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``gray`` with everything outside the ellipse inscribed in it set to the air level (the 1st
    percentile inside ``field`` and the ellipse), and ``field`` within the ellipse.

    A tight crop of the chest runs tissue into its corners; the same slice exported with a circular field of
    view has padding there (``fill_padding`` turns it to air), and its body box is the circle's. Where the
    box is cropped without a margin (``crop_to_field``), both become the circle on black: a model that
    always sees this cannot learn that dark corners mean anything (a model that never saw them lost 0.37 of
    its sensitivity on gray-padded exports; BENCHMARKS.md). The field of view of a slice that had none is
    cut to the ellipse: its corners are seldom lung.
    """
    height, width = gray.shape
    rows = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height * 2 - 1  # pixel centres in (-1, 1)
    cols = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width * 2 - 1
    inside = rows**2 + cols**2 <= 1.0
    kept = field & inside
    values = gray[kept] if kept.any() else gray[inside]
    air = np.float32(_percentiles(values, _LOW_PERCENTILE))
    return np.where(inside, gray, air), kept


def standardise_intensity(gray: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Map the 1st/99th percentiles of ``gray`` inside ``field`` (bool mask) linearly to 0 and 1, clipped.

    A percentile window instead of min/max, so one saturated marker or one black pixel does not set
    the contrast; a flat field (no contrast to stretch) is returned unchanged.
    """
    values = gray[field] if field.any() else gray.flatten()
    low, high = _percentiles(values, [_LOW_PERCENTILE, _HIGH_PERCENTILE]).astype(np.float32)
    if high - low < _MIN_CONTRAST:
        return gray
    standardised = gray - low  # one new array, then in place
    standardised /= high - low
    return np.clip(standardised, 0.0, 1.0, out=standardised)


def _percentiles(values: np.ndarray, q: float | list[float]) -> np.floating | np.ndarray:
    """``np.percentile(values, q)`` of a 1-D array, the same numbers, but read off ``values.sort()`` (in
    place: pass a copy such as ``gray[mask]``).

    numpy partitions for the six order statistics it reads, and that partition took three times as long as
    its SIMD sort (0.6 ms on a 100,000-pixel field). The interpolation is numpy's "linear" method step by
    step: float64 for a list ``q``, the values' dtype for a scalar (numpy's weak promotion of a float); a NaN
    sorts last and makes the result NaN, as there.
    """
    values.sort()
    quantiles = np.true_divide(q, 100)
    virtual = (values.size - 1) * quantiles
    below = np.floor(virtual)
    gamma = virtual - below if isinstance(q, list) else float(virtual - below)
    index = np.asarray(below, dtype=np.intp)
    low, high = values[index], values[np.minimum(index + 1, values.size - 1)]
    step = high - low
    result = np.where(np.asarray(gamma) >= 0.5, high - step * (1 - gamma), low + step * gamma)
    result = np.where(np.isnan(values[-1]), values[-1], result)
    return result if isinstance(q, list) else result[()]


def _erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_erosion(mask, iterations=...)``: the 4-connected cross, the edge eroded."""
    return _morphology(cv2.erode, mask, iterations)


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_dilation(mask, iterations=...)``: the 4-connected cross, nothing grows
    in from beyond the edge."""
    return _morphology(cv2.dilate, mask, iterations)


def _morphology(operation: Callable[..., np.ndarray], mask: np.ndarray, iterations: int) -> np.ndarray:
    """``operation`` (``cv2.erode`` or ``cv2.dilate``) with the cross ``iterations`` times on a bool mask,
    pixels beyond the edge taken as False."""
    result = operation(
        np.ascontiguousarray(mask, dtype=bool).view(np.uint8),
        _CROSS,
        iterations=iterations,
        borderType=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return result.view(bool)


def _orthogonal_hull(mask: np.ndarray) -> np.ndarray:
    """Fill ``mask`` between its first and last pixel in every row, and in every column; return the union.

    A cheap stand-in for the convex hull: it holds the lungs inside a body ring, and also the lungs of
    a tight crop where they touch the image edge on one axis, but not letters in a corner beside an
    oval body.
    """

    def spans(axis: int) -> np.ndarray:
        """Each line along ``axis`` filled from its first to its last pixel (an empty line stays empty)."""
        length = mask.shape[axis]
        # Indices as int16 where they fit: the comparisons over the whole slice ran 2.4x as fast as on int64.
        dtype = np.int16 if length < np.iinfo(np.int16).max else np.int64
        has, first, last = _line_ends(mask, axis)
        first, last = np.where(has, first, length).astype(dtype), np.where(has, last, -1).astype(dtype)
        index = np.arange(length, dtype=dtype).reshape((1, -1) if axis == 1 else (-1, 1))
        first, last = np.expand_dims(first, axis), np.expand_dims(last, axis)
        return (index >= first) & (index <= last)

    hull = spans(1)
    hull |= spans(0)
    return hull


def _line_ends(mask: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each line along ``axis`` (1: the rows, 0: the columns): whether it holds a pixel of ``mask``, and
    the index of its first and of its last (0 and length - 1 in an empty line)."""
    length = mask.shape[axis]
    return mask.any(axis=axis), mask.argmax(axis=axis), length - 1 - np.flip(mask, axis).argmax(axis=axis)
