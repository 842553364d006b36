"""Decoded slices held in memory: files -> prepared (N, S, S) numpy slices (``data.slice_dataset`` trains)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from covidct.errors import InputError
from covidct.io.budget import MAX_PIXELS
from covidct.io.failures import InputFailure
from covidct.io.images import read_grayscale
from covidct.io.readers import is_volume_path, read_path_volumes
from covidct.preprocess.lung_slices import lung_slice_indices
from covidct.preprocess.pipeline import prepare_hu_slices, prepare_slice, stack_prepared
from covidct.preprocess.transforms import Preprocessing

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DecodedSlices:
    """Slices that decoded, as (N, S, S) float16 in [0, 1], with their source indices,
    and those that did not."""

    images: np.ndarray
    indices: np.ndarray
    failures: list[InputFailure]


def decode_slices(
    paths: Sequence[Path],
    preprocessing: Preprocessing,
    *,
    progress: Progress | None = None,
    max_pixels: int = MAX_PIXELS,
    pool: Executor | None = None,
) -> DecodedSlices:
    """Decode every path once and prepare it as ``preprocessing`` says; a file that fails is
    recorded and the rest go on.

    Holding the resized slices in memory (224 x 224 x 2 bytes each) lets every epoch skip PNG decoding,
    which on a 2-core machine would otherwise compete with the network for the CPU.

    A path naming a CT volume (a DICOM file, a folder of DICOM series, a NIfTI file) gives one slice per
    lung slice in it (``lung_slice_indices``), windowed from HU with ``preprocessing.hu_window``; all of
    them carry that path's index, so each becomes a sample with its manifest row's label and group.
    ``max_pixels`` caps an image's (or a volume slice's) width x height, checked from the header before
    decoding. With a ``pool`` (see ``decode_pool``) the files are decoded in its worker processes, in order.
    """
    decode = partial(decode_path, preprocessing=preprocessing, max_pixels=max_pixels)
    results = (
        pool.map(decode, paths) if pool else map(decode, paths)
    )  # one file per task: decoding (~10 ms) outweighs the hand-off
    images, indices, failures = [], [], []
    for index, (prepared, failure) in enumerate(results):
        if failure is not None:
            failures.append(failure)
        images.extend(prepared)
        indices.extend([index] * len(prepared))
        if progress:
            progress(index + 1, len(paths))
    return DecodedSlices(
        stack_prepared(images, preprocessing.image_size), np.asarray(indices, dtype=np.int64), failures
    )


def decode_path(
    path: Path, *, preprocessing: Preprocessing, max_pixels: int = MAX_PIXELS
) -> tuple[list[np.ndarray], InputFailure | None]:
    """The prepared (S, S) slices of one file, or no slice and why it failed.

    A module-level function returning its failure instead of raising, so a process pool can run it and
    send both back (``InputError`` keeps fields that pickling would lose).
    """
    try:
        if is_volume_path(path):
            return _lung_slices(path, preprocessing, max_pixels), None
        return [prepare_slice(read_grayscale(path, max_pixels=max_pixels), preprocessing)], None
    except InputError as error:
        return [], InputFailure.from_error(error, str(path))


def decode_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for ``decode_slices``: PNG decoding and the site steps (numpy on small arrays) hold
    the GIL most of the time, threads would not help.

    Spawned, not forked: the parent runs torch's thread pools, which a fork would copy in an unusable state.
    """
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _lung_slices(path: Path, preprocessing: Preprocessing, max_pixels: int) -> list[np.ndarray]:
    """(S, S) float16 prepared lung slices of every volume at ``path``, windowed with the card's window.

    Raises:
        InputError: a volume cannot be read, or one of them has no slice that shows lung.
    """
    volumes = read_path_volumes(path, max_pixels=max_pixels)
    return [
        prepared
        for volume in volumes
        for prepared in prepare_hu_slices(volume.hu[lung_slice_indices(volume)], preprocessing)
    ]
