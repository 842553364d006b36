"""A CT volume read from a DICOM series or a NIfTI file: slices in Hounsfield units plus privacy-safe ids.

Readers (``io.dicom``, ``io.nifti``) return this one type, so windowing, lung-slice selection and
study-level prediction never care which format a study came in.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from covidct.errors import InputError
from covidct.io.budget import MAX_PIXELS
from covidct.io.images import MIN_SIDE_PX

# 2 GiB of float32 HU: far above any chest CT (512 x 512 x 1000 slices is 262M voxels), far below what
# would exhaust a workstation, so a header claiming more is refused before any pixel is decoded.
MAX_VOXELS = 512 * 1024 * 1024


@dataclass(frozen=True)
class Volume:
    """One series or volume, ordered along the slice axis.

    Attributes:
        source: what the user named (file or folder path, or an upload's file name); shown in outputs.
        study_key: 16 hex digits of the SHA-256 of the StudyInstanceUID (DICOM) or of ``source`` (NIfTI);
            never the UID itself or any patient attribute.
        series_key: 16 hex digits of the SHA-256 of the SeriesInstanceUID (DICOM) or of ``source``.
        hu: (N, H, W) float32 Hounsfield units, slice 0 first along the slice axis (inferior to superior
            where the geometry says so).
        slice_positions_mm: (N,) float64 position of each slice along the slice normal, or None when
            the files carry no geometry (order then came from SliceLocation or InstanceNumber).
        slice_names: (N,) a label per slice for per-slice results (file name, or "<file>#<index>").
        spacing_mm: (slice, row, column) spacing in mm where known, else None.
        pending: for a volume read with its pixels deferred (``io.readers.read_volume``), the decoding
            still to do; ``hu`` is complete only once ``hu_until(n_slices)`` returned. None: complete.
    """

    source: str
    study_key: str
    series_key: str
    hu: np.ndarray
    slice_names: tuple[str, ...]
    slice_positions_mm: np.ndarray | None = None
    spacing_mm: tuple[float, float, float] | None = None
    pending: PendingSlices | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"hu must be (N, H, W); got shape {self.hu.shape}")
        if len(self.slice_names) != self.hu.shape[0]:
            raise ValueError(f"{len(self.slice_names)} slice names for {self.hu.shape[0]} slices")

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    def hu_until(self, stop: int) -> np.ndarray:
        """``hu[:stop]``, decoding first what a deferred read left to do there (a no-op when complete).

        Raises:
            InputError: a file of the series cannot be decoded (as an eager read would have raised it).
        """
        if self.pending is not None:
            self.pending.decode_until(min(stop, self.n_slices))
        return self.hu[:stop]

    @property
    def origin(self) -> StudyOrigin:
        """What a study result built from this volume names it by."""
        return StudyOrigin(self.source, self.study_key, self.series_key, self.n_slices)


class PendingSlices:
    """The decoding a deferred read left, done on demand in order, so that work on a series' first
    slices (lung selection, the site steps, the forward pass) starts while the rest is still compressed.

    ``steps`` decodes one file each and yields how many leading slices are then decoded. Thread-safe: the
    thread that asks first decodes; an error is kept and raised again to whoever asks later.
    """

    def __init__(self, steps: Iterator[int]) -> None:
        self._steps = steps
        self._decoded = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def decode_until(self, stop: int) -> None:
        with self._lock:
            while self._error is None and self._decoded < stop:
                try:
                    self._decoded = next(self._steps)
                except StopIteration:
                    self._error = RuntimeError(f"a deferred read ended after {self._decoded} slices")
                # kept for every later caller, then raised
                except BaseException as error:  # noqa: BLE001
                    self._error = error
            if self._error is not None:
                raise self._error


@dataclass(frozen=True)
class StudyOrigin:
    """What a study's result says about where it came from: the name the user gave,
    hashed keys, the slice count.

    A ``Volume`` has one (``Volume.origin``); so has a set of uploaded 2-D slices answered as one study,
    which has no volume.
    """

    source: str
    study_key: str
    series_key: str
    n_slices: int


def privacy_key(identifier: str) -> str:
    """16 hex digits of SHA-256(identifier): a stable reference to a study that reveals nothing about it."""
    return hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:16]


def check_volume_size(source: str, shape: tuple[int, int, int], *, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a (slices, rows, columns) ``shape`` read from a header before any pixel is decoded.

    Raises:
        InputError: no slice, a slice over ``max_pixels`` or under ``MIN_SIDE_PX`` on a side, or
            over ``MAX_VOXELS`` in all.
    """
    n_slices, rows, columns = shape
    if n_slices < 1:
        raise InputError(
            f"the volume has {n_slices} slices (shape {shape}); expected at least one", path=source
        )
    if rows * columns > max_pixels:
        raise InputError(
            f"slices are {columns}x{rows} pixels, over the {max_pixels:,}-pixel limit", path=source
        )
    if min(rows, columns) < MIN_SIDE_PX:
        raise InputError(
            f"slices are {columns}x{rows} pixels; expected at least {MIN_SIDE_PX} on each side", path=source
        )
    if n_slices * rows * columns > MAX_VOXELS:
        raise InputError(
            f"{n_slices} slices of {columns}x{rows} pixels are over the {MAX_VOXELS:,}-voxel limit",
            path=source,
        )
