"""Uploaded files -> images and volumes for the predictor, with each unusable file's error and HTTP status.

``io.readers.read_upload`` decodes everything in memory. Before it, two checks give the right status:
a file none of the readers would take is a 415 (``UnsupportedUploadError``), and an image whose header
declares more than the server's pixel limit is a 413 (``UploadTooLargeError``) before it is decoded, so
a decompression bomb never expands. A file the readers take but cannot decode is a 422.

Decoded voxels count against the request's ``VoxelBudget``: the images' sizes are summed from their headers
first, so an upload of many small-on-the-wire, large-when-decoded images is a 413 before any is decoded;
volumes are counted from their headers as they are read.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from PIL import Image, UnidentifiedImageError

from covidct.errors import InputError, UnsupportedUploadError, UploadTooLargeError
from covidct.io.budget import VoxelBudget
from covidct.io.dicom import is_dicom
from covidct.io.images import IMAGE_FORMATS, IMAGE_SUFFIXES
from covidct.io.nifti import is_nifti
from covidct.io.readers import Upload, read_upload

SUPPORTED_TYPES = "PNG, JPEG, BMP, TIFF, DICOM or NIfTI"
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class DecodedUpload:
    """What one request's files gave.

    Attributes:
        upload: the decoded images and volumes, and the files the readers could not decode (422).
        rejected: files refused before decoding, as ``UploadTooLargeError`` or ``UnsupportedUploadError``.
    """

    upload: Upload
    rejected: list[InputError]

    @property
    def errors(self) -> list[InputError]:
        """Every file that gave nothing, as an error (rejected first, then undecodable ones)."""
        return self.rejected + [
            InputError(failure.reason, path=failure.path) for failure in self.upload.failures
        ]


def decode_upload(
    files: Sequence[tuple[str, bytes]], *, max_pixels: int, budget: VoxelBudget
) -> DecodedUpload:
    """Decode every usable file in memory; each file that cannot be used is recorded and the rest go on.

    Raises:
        UploadTooLargeError: the files' decoded voxels are over ``budget``'s limit (the
            whole upload is refused).
        BusyError: ``budget``'s shared pool is held by other requests.
    """
    accepted, rejected = [], []
    declared = VoxelBudget(budget.limit)  # the images' sum from their headers, checked before any is decoded
    for name, data in files:
        try:
            pixels = _checked_pixels(name, data, max_pixels=max_pixels)
            accepted.append((name, data))
        except InputError as error:
            rejected.append(error)
            continue
        declared.reserve(name, pixels)
    return DecodedUpload(read_upload(accepted, max_pixels=max_pixels, budget=budget), rejected)


def _checked_pixels(name: str, data: bytes, *, max_pixels: int) -> int:
    """An image's declared pixels (0 for a volume, counted when it is read); raise unless a reader
    takes the file (by name or signature, and in one of ``IMAGE_FORMATS`` for an image) and an image is
    within ``max_pixels``."""
    if is_nifti(name) or is_dicom((name, data)):
        return 0
    if not (data.startswith(_IMAGE_SIGNATURES) or PurePath(name).suffix.lower() in IMAGE_SUFFIXES):
        found = "an empty file" if not data else f"content starting {data[:8]!r}"
        raise UnsupportedUploadError(
            f"unsupported file type ({found}); expected {SUPPORTED_TYPES}", path=name
        )
    width, height = _declared_size(name, data, max_pixels=max_pixels)
    if width * height > max_pixels:
        raise UploadTooLargeError(
            f"image is {width}x{height} pixels, over the server's {max_pixels:,}-pixel limit", path=name
        )
    return width * height


def _declared_size(name: str, data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image header alone, or (0, 0) when there is none (the reader then says why).

    Raises:
        UploadTooLargeError: Pillow refuses the header outright (over twice its 89M-pixel bomb limit).
        UnsupportedUploadError: content of another image format (PostScript, GIF,
            WEBP...) under an image name.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89M pixels; the caller's own limit refuses those with a clearer error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                return image.size
    except UnidentifiedImageError:
        if not data or data.startswith(
            _IMAGE_SIGNATURES
        ):  # empty, or damaged in a format we read: the reader says why
            return 0, 0
        raise UnsupportedUploadError(
            f"not a PNG, JPEG, BMP or TIFF image (content starting {data[:8]!r}); expected {SUPPORTED_TYPES}",
            path=name,
        ) from None
    except Image.DecompressionBombError as error:
        raise UploadTooLargeError(
            f"image is over the server's {max_pixels:,}-pixel limit ({error})", path=name
        ) from None
    except (OSError, SyntaxError, ValueError):
        return 0, 0
