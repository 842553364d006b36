"""One decoded slice (or HU slice, windowed first) -> the (S, S) slice the network sees.

The single path training, evaluation and inference share.

Whatever a model card's ``Preprocessing`` switches on happens here and nowhere else, so a step can
never run in training but not at inference (or the other way round).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from covidct.preprocess import site
from covidct.preprocess.transforms import Preprocessing, resize_gray
from covidct.preprocess.window import window_hu


def prepare_slice(gray: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Return (S, S) float32 in [0, 1] from a (H, W) float32 slice in [0, 1], S =
    ``preprocessing.image_size``.

    The site steps run in a fixed order: a gray frame outside the field of view is filled first (the body
    search needs air there), annotations are removed on the whole image (they sit beside
    the body, and the crop would otherwise keep those within its margin), then the crop, then the
    intensity window measured inside the body's hull (so black air around a whole-body figure does
    not set the contrast).
    """
    padding = None
    if preprocessing.fill_padding:
        gray, padding = site.fill_padding(gray)
    if not (
        preprocessing.crop_field
        or preprocessing.remove_annotations
        or preprocessing.standardise_intensity
        or preprocessing.circular_field
    ):
        return resize_gray(gray, preprocessing.image_size)
    body = site.find_body(gray, padding)
    if preprocessing.remove_annotations:
        gray = site.remove_annotations(gray, body)
    hull = body.hull
    if preprocessing.crop_field:
        gray, hull = site.crop_to_field(gray, body, margin=not preprocessing.circular_field)
    if preprocessing.circular_field:
        gray, hull = site.keep_circular_field(gray, hull)
    if preprocessing.standardise_intensity:
        gray = site.standardise_intensity(gray, hull)
    return resize_gray(gray, preprocessing.image_size)


def prepare_slices(grays: Iterable[np.ndarray], preprocessing: Preprocessing) -> np.ndarray:
    """(N, S, S) float16 network-ready slices from (H, W) float32 slices in [0, 1]:
    ``prepare_slice`` on each, stacked."""
    return stack_prepared([prepare_slice(gray, preprocessing) for gray in grays], preprocessing.image_size)


def prepare_hu_slices(hu: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """(N, S, S) float16 network-ready slices from (N, H, W) HU, windowed by ``preprocessing.hu_window``.

    How every DICOM/NIfTI slice reaches the network, in training and inference alike.
    """
    return prepare_slices(window_hu(hu, preprocessing.hu_window), preprocessing)


def stack_prepared(prepared: Sequence[np.ndarray], image_size: int) -> np.ndarray:
    """Stack (S, S) prepared slices into one (N, S, S) float16 array (N may be 0), the network's input.

    numpy, not torch: predict decodes in a background thread, where a torch op would start a second OpenMP
    team competing with the forward pass for the cores, and the ONNX engines run without torch.
    """
    if not prepared:
        return np.empty((0, image_size, image_size), dtype=np.float16)
    return np.stack(prepared).astype(np.float16)
