"""Decoded slices in batches, streamed from files and folders while the network works on the previous batch.

A background thread walks the inputs and decodes the next batches into a small bounded queue, so
decoding overlaps the forward pass and memory holds a few batches whatever the number of files (a
batch holds at most one volume). PNG decoding and the site steps hold the GIL for much of their time,
so with ``decode_workers`` the files are decoded in spawned worker processes (``data.dataset.decode_pool``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from covidct.data.dataset import decode_pool, decode_slices
from covidct.errors import InputError
from covidct.io.budget import DEFAULT_REQUEST_VOXELS, MAX_PIXELS, VoxelBudget
from covidct.io.discover import VolumeInput, iter_inputs
from covidct.io.failures import InputFailure, SkippedFile
from covidct.io.readers import read_volume
from covidct.io.volume import Volume
from covidct.preprocess.transforms import Preprocessing

DEFAULT_PREFETCH = 2
_OVER_BUDGET_FIX = (
    "raise --max-voxels if the study is genuine and the machine has the memory (4 bytes a voxel)"
)
_DONE = object()
_T = TypeVar("_T")
_PUT_TIMEOUT_S = 0.1


@dataclass(frozen=True)
class SliceBatch:
    """One batch of decoded slices, and the inputs met since the previous batch that gave no slice.

    Attributes:
        paths: the file of each decoded slice, one per row of ``images``.
        images: (N, S, S) float16 grayscale in [0, 1], N <= the batch size (N may be 0).
        failures: inputs that failed (missing, unreadable folder, undecodable image).
        skipped: files left out for their type.
        n_images_seen: image files and volumes taken so far in the whole stream, decoded
            or failed (for progress).
        volumes: CT volumes (DICOM series, NIfTI files) read in HU; each comes in a batch of its own
            making, since one can hold hundreds of slices (the caller batches their slices).
    """

    paths: list[Path]
    images: np.ndarray
    failures: list[InputFailure]
    skipped: list[InputFailure]
    n_images_seen: int
    volumes: list[Volume] = field(default_factory=list)


def default_decode_workers(device_type: str, cores: int | None = None) -> int:
    """Decoding processes when none are asked for: the cores the forward pass leaves idle.

    Preparing a slice (PNG decoding, the site steps) takes about 10 ms of one core. A GPU runs the
    network thousands of slices a second and leaves the CPU to decoding: half the cores, up to 8. On
    the CPU the network takes every core, and the one decoding thread keeps up with it below 8 cores;
    from 8 cores a quarter of them (up to 4) decode. ``device_type`` is "cuda" or "cpu" (a torch device's
    ``type``; a plain string, so that the ONNX engines' caller needs no torch).
    """
    cores = cores or len(os.sched_getaffinity(0))
    if device_type == "cuda":
        return min(8, cores // 2) if cores >= 4 else 0
    return min(4, cores // 4) if cores >= 8 else 0


def iter_slice_batches(
    inputs: Iterable[str | Path],
    *,
    preprocessing: Preprocessing,
    batch_size: int,
    max_pixels: int = MAX_PIXELS,
    prefetch: int = DEFAULT_PREFETCH,
    decode_workers: int = 0,
    max_voxels: int = DEFAULT_REQUEST_VOXELS,
    first_batch_size: int | None = None,
) -> Iterator[SliceBatch]:
    """Yield ``SliceBatch``es of at most ``batch_size`` slices prepared as ``preprocessing`` says,
    decoded ahead in a thread.

    The first batch holds at most ``first_batch_size`` images (default: ``batch_size``): nothing overlaps
    its decoding, so a smaller one starts the caller's work sooner.

    At most ``prefetch`` decoded batches wait in the queue. Stopping early (``break``, an exception in
    the caller) stops the thread after the batch it is decoding. An unexpected error in the thread is
    raised here, in the caller's thread; a file that cannot be decoded (or whose header claims more
    than ``max_pixels`` pixels per image or slice, or a volume more than ``max_voxels``) is a failure in its
    batch, so memory holds at most ``prefetch`` + 2 volumes of ``max_voxels``. With ``decode_workers``
    the thread hands each batch's files to that many worker processes (``data.dataset.decode_pool``).
    """
    batches: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    worker = threading.Thread(
        target=_produce,
        args=(
            inputs,
            preprocessing,
            (min(first_batch_size or batch_size, batch_size), batch_size),
            max_pixels,
            max_voxels,
            decode_workers,
            batches,
            stop,
        ),
        name="covidct-decode",
        daemon=True,
    )
    worker.start()
    try:
        while (item := batches.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        _drain(batches)
        worker.join()


def _produce(
    inputs: Iterable[str | Path],
    preprocessing: Preprocessing,
    batch_sizes: tuple[int, int],
    max_pixels: int,
    max_voxels: int,
    decode_workers: int,
    batches: queue.Queue,
    stop: threading.Event,
) -> None:
    try:
        with decode_pool(decode_workers) if decode_workers else contextlib.nullcontext() as pool:
            for batch in _decoded_batches(inputs, preprocessing, batch_sizes, max_pixels, max_voxels, pool):
                if not _put(batches, batch, stop):
                    return
        _put(batches, _DONE, stop)
    # Handed to the consumer, which raises it with its traceback
    except BaseException as error:  # noqa: BLE001
        _put(batches, error, stop)


def _decoded_batches(
    inputs: Iterable[str | Path],
    preprocessing: Preprocessing,
    batch_sizes: tuple[int, int],
    max_pixels: int,
    max_voxels: int,
    pool: Executor | None,
) -> Iterator[SliceBatch]:
    """The batches of ``iter_slice_batches``; ``batch_sizes`` is (first batch's size, every other's)."""
    batch_size, later_size = batch_sizes
    paths: list[Path] = []
    failures: list[InputFailure] = []
    skipped: list[InputFailure] = []
    n_seen = 0
    for item in iter_inputs(inputs):
        if isinstance(item, Path):
            paths.append(item)
            n_seen += 1
        elif isinstance(item, VolumeInput):
            n_seen += 1
            try:
                volume = read_volume(
                    item,
                    max_pixels=max_pixels,
                    budget=VoxelBudget(max_voxels, scope="study", fix=_OVER_BUDGET_FIX),
                    defer_pixels=True,  # decoded by the study's own pipeline (Predictor.predict_volume)
                )
            except InputError as error:
                failures.append(InputFailure.from_error(error, item.source))
            else:
                yield _decoded(paths, failures, skipped, preprocessing, max_pixels, n_seen, pool, [volume])
                paths, failures, skipped = [], [], []
        elif isinstance(item, SkippedFile):
            skipped.append(item)
        else:
            failures.append(item)
        if len(paths) == batch_size:
            yield _decoded(paths, failures, skipped, preprocessing, max_pixels, n_seen, pool)
            paths, failures, skipped, batch_size = [], [], [], later_size
    if paths or failures or skipped:
        yield _decoded(paths, failures, skipped, preprocessing, max_pixels, n_seen, pool)


def _decoded(
    paths: list[Path],
    failures: list[InputFailure],
    skipped: list[InputFailure],
    preprocessing: Preprocessing,
    max_pixels: int,
    n_seen: int,
    pool: Executor | None,
    volumes: Sequence[Volume] = (),
) -> SliceBatch:
    decoded = decode_slices(paths, preprocessing, max_pixels=max_pixels, pool=pool)
    return SliceBatch(
        [paths[i] for i in decoded.indices],
        decoded.images,
        failures + decoded.failures,
        skipped,
        n_seen,
        list(volumes),
    )


def _put(batches: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer has stopped; False when it has (the producer should end)."""
    while not stop.is_set():
        try:
            batches.put(item, timeout=_PUT_TIMEOUT_S)
            return True
        except queue.Full:
            continue
    return False


def _drain(batches: queue.Queue) -> None:
    while True:
        try:
            batches.get_nowait()
        except queue.Empty:
            return


def computed_ahead(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """Yield ``items`` while a thread computes the next ``depth`` of them.

    For a volume's batches: while the forward pass runs on one batch (onnxruntime and torch release the
    GIL), the next ones are found and prepared (numpy and OpenCV, which release it for some of their work).
    Two, not one: preparing a series' batch takes about as long as its forward pass, so with one the
    thread stopped whenever it finished first and the forward pass then waited for it (0.4 s of a 150-slice
    series, issue 16). At most ``depth`` items are computed ahead (a few MB each); an error computing one is
    raised here when it is reached.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidct-prepare") as pool:
        upcoming = deque(pool.submit(next, items, _DONE) for _ in range(depth))
        while (item := upcoming.popleft().result()) is not _DONE:
            upcoming.append(pool.submit(next, items, _DONE))
            yield item
