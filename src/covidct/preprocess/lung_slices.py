"""Which slices of a CT volume show lung: the model was trained on lung slices, so only those are scored.

A chest CT series also covers the neck and the upper abdomen, where a COVID-19 classifier has
nothing to see and its output is meaningless. The test is on HU alone, so it needs no model and
behaves the same for DICOM and NIfTI.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from covidct.errors import InputError
from covidct.io.volume import Volume
from covidct.preprocess.components import label_components

# Everything denser than this is tissue: the body is the largest such region, with its holes filled
# (the lungs and airways are the holes), so air around the patient never counts as lung.
BODY_FLOOR_HU = -500.0
# Aerated lung parenchyma, about -950 to -400 HU (emphysema below, consolidation above); ground-glass
# opacity (-750 to -300 HU) is still mostly inside this range, so a diseased lung is kept.
LUNG_RANGE_HU = (-950.0, -400.0)
# A slice is a lung slice when lung-range pixels cover at least this share of the body: the trachea
# alone (neck) or bowel gas (abdomen) stay below it, the lung apices and bases reach it.
MIN_LUNG_FRACTION = 0.05
# The body is found on blocks of k x k pixels, k chosen to leave at least this many blocks a side (a 512 x 512
# slice: 2 x 2 blocks, 256 x 256 of them, a quarter of the labelling work; issue 16). A block is body when any
# of its pixels is: what is connected at full resolution stays connected and what the body encloses stays
# enclosed (a gap narrower than a block may close, none opens). Lung pixels are counted at full resolution
# inside the body's blocks. On 300 real slices at 512 px (BENCHMARKS.md) this kept 3 more lung slices than
# full resolution did and no more slices with the lungs filled in.
EXAMINED_SIZE = 256


def select_lung_slices(hu: np.ndarray) -> np.ndarray:
    """Return an (N,) bool mask of the slices of ``hu`` ((N, H, W) HU) that contain lung inside the body.

    See ``BODY_FLOOR_HU``, ``LUNG_RANGE_HU``, ``MIN_LUNG_FRACTION`` and ``EXAMINED_SIZE`` for the thresholds
    and why.
    """
    return np.array([_lung_fraction(slice_hu) >= MIN_LUNG_FRACTION for slice_hu in hu], dtype=bool)


def lung_slice_indices(volume: Volume) -> np.ndarray:
    """(K,) int64 indices of the volume's slices that show lung, K >= 1.

    Raises:
        InputError: no slice shows lung.
    """
    indices = np.concatenate(list(iter_lung_slice_indices(volume, volume.n_slices)))
    if indices.size == 0:
        raise no_lung_error(volume)
    return indices


def iter_lung_slice_indices(
    volume: Volume, chunk_size: int, *, first_chunk_size: int | None = None
) -> Iterator[np.ndarray]:
    """The indices of the lung slices among each next ``chunk_size`` slices (possibly none), in order.

    Prediction starts on the first lungs while the next slices are still being examined (and, for a
    volume read with deferred pixels, decoded). Nothing overlaps the first chunk, so a smaller
    ``first_chunk_size`` starts the network sooner.
    """
    start, stop = 0, min(first_chunk_size or chunk_size, chunk_size)
    while start < volume.n_slices:
        chunk = volume.hu_until(stop)[start:stop]
        yield start + np.flatnonzero(select_lung_slices(chunk))
        start, stop = stop, stop + chunk_size


def no_lung_error(volume: Volume) -> InputError:
    """What a volume without a lung slice is told."""
    return InputError(
        f"none of its {volume.n_slices} slices shows lung (too "
        "few pixels in the lung HU range inside the body); "
        "expected a chest CT series through the lungs, not a localizer, head or abdomen series",
        path=volume.source,
    )


def _lung_fraction(slice_hu: np.ndarray) -> float:
    """Share of the body's (hole-filled) area that is in the lung range; 0 when no body is found."""
    k = max(1, min(slice_hu.shape) // EXAMINED_SIZE)
    labels, n_regions = label_components(np.logical_or.reduce(_block_tiles(slice_hu > BODY_FLOOR_HU, k)))
    if n_regions == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())[1:]
    body = _fill_holes(labels == 1 + int(np.argmax(sizes)))
    low, high = LUNG_RANGE_HU
    lung_pixels = np.sum(_block_tiles((slice_hu >= low) & (slice_hu <= high), k), axis=0, dtype=np.int64)
    return float(lung_pixels[body].sum()) / float(body.sum() * k * k)


def _block_tiles(mask: np.ndarray, k: int) -> list[np.ndarray]:
    """The k * k strided views of ``mask`` that each hold one pixel of every whole k x k block.

    Combined element-wise they give per-block answers (any, count) far faster than numpy's reductions
    over the small axes of a (rows, k, cols, k) reshape.
    """
    rows, cols = mask.shape[0] // k * k, mask.shape[1] // k * k
    return [mask[i:rows:k, j:cols:k] for i in range(k) for j in range(k)]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask)``: the background regions that do not reach the border are holes.

    The same result, from one labelling of the background instead of a dilation repeated until it stops
    (a third of the time per 512 x 512 slice; issue 16).
    """
    background, _ = label_components(~mask)
    border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    return ~np.isin(background, border[border > 0])
