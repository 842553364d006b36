"""Decode image files (PNG, JPEG, BMP, TIFF) into one grayscale convention, whatever the file's mode.

Every class goes through this one function, so file format, bit depth or colour mode can never act
as a label (UCSD COVID slices are RGBA PNGs while many non-COVID ones are JPEGs).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidct.errors import InputError
from covidct.io.budget import MAX_PIXELS, VoxelBudget

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# The formats the README lists, whatever a file is named: without ``formats=`` Pillow would hand a PostScript
# file named scan.png to Ghostscript, and decode SGI, TGA, PCX, ICO, WEBP, GIF or PPM content too (issue 15).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
MIN_SIDE_PX = 32
# Formats whose extra frames are further images (pages, animation frames), not views of the first.
STACK_FORMATS = frozenset({"TIFF", "PNG"})


def read_grayscale(
    source: str | Path | tuple[str, bytes], *, max_pixels: int = MAX_PIXELS, budget: VoxelBudget | None = None
) -> np.ndarray:
    """Return the image at ``source`` (a path, or an upload's ``(name, bytes)``) as a (H,
    W) float32 array in [0, 1].

    8-bit PNG/JPEG slices are taken as already windowed: their gray levels go to the model as they are
    (HU windowing only applies to DICOM and NIfTI). Colour is converted with ITU-R 601 luma; transparency
    is composited on black (the CT background); 16-bit and 32-bit images are scaled by their type's range,
    not per image, so intensities stay comparable across files. Uploads are decoded in memory, never
    written to disk, with the same checks and messages as files.

    Raises:
        InputError: missing, empty, truncated or non-image file (or a format other than ``IMAGE_FORMATS``);
            images over ``max_pixels`` (checked from the header, before decoding, so a decompression bomb is
            never expanded) or under ``MIN_SIDE_PX`` on a side; NaN or infinite pixels; several frames in one
            file (a multi-page TIFF, an animated PNG).
        UploadTooLargeError: over ``budget`` (reserved from the header, before decoding).
    """
    name, opened = (
        (source[0], io.BytesIO(source[1])) if isinstance(source, tuple) else (Path(source), Path(source))
    )
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89M pixels; our own, lower max_pixels check refuses
            # those with a clearer error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(opened, formats=IMAGE_FORMATS)
        with image:
            _check_size(name, image.size, max_pixels)
            _check_single_frame(name, image)
            if budget is not None:
                budget.reserve(str(name), image.size[0] * image.size[1])
            image.load()
            return _to_unit_gray(image, name)
    except FileNotFoundError:
        raise InputError("file not found", path=name) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected an image file", path=name) from None
    except UnidentifiedImageError:
        is_empty = len(source[1]) == 0 if isinstance(source, tuple) else Path(source).stat().st_size == 0
        raise InputError(
            "empty file" if is_empty else "not a readable PNG, JPEG, BMP or TIFF image", path=name
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"cannot decode image ({error})", path=name) from None


def _check_size(name: str | Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InputError(f"image is {width}x{height} pixels, over the {max_pixels:,}-pixel limit", path=name)
    if min(width, height) < MIN_SIDE_PX:
        raise InputError(
            f"image is {width}x{height} pixels; expected at least {MIN_SIDE_PX} on each side", path=name
        )


def _check_single_frame(name: str | Path, image: Image.Image) -> None:
    """A stack of slices in one file (multi-page TIFF, animated PNG) is refused: reading its first frame
    alone would score one slice as if it were the whole file. A JPEG's extra pictures (MPO: previews,
    stereo pairs) are other views of its first, which is read."""
    n_frames = getattr(image, "n_frames", 1)
    if image.format in STACK_FORMATS and n_frames > 1:
        raise InputError(
            f"{image.format} file with {n_frames} frames; covidct reads one slice per image file: save each "
            "slice as its own file, or the series as DICOM or NIfTI",
            path=name,
        )


def _to_unit_gray(image: Image.Image, name: str | Path) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _scaled(image, 65535.0)
    if image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if array.max(initial=0) <= 65535 else float(2**31 - 1)
        return (np.clip(array, 0, None) / scale).astype(np.float32)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InputError(
                "float image with NaN or infinite pixels; expected finite gray levels", path=name
            )
        low, high = float(array.min()), float(array.max())
        return np.zeros_like(array) if high <= low else (array - low) / (high - low)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return _scaled(image.convert("L"), 255.0)


def _scaled(image: Image.Image, full_scale: float) -> np.ndarray:
    """An integer image as float32 divided by ``full_scale``: converted into a new array, divided in place
    (a second array cost every slice of a 512-file predict 0.1 ms; issue 16)."""
    unit = np.asarray(image, dtype=np.float32)
    unit /= full_scale
    return unit
