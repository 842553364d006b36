"""Many damaged copies of valid PNG, JPEG, DICOM and NIfTI files: each decodes to a valid
array or raises InputError.

Truncations and flipped bytes are drawn with a fixed seed, so a failure names a variant that can be
rebuilt. Any other exception (or a malformed array) is a reader bug: in a batch it would crash the run.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import RLELossless
from volumes import chest_phantom, write_dicom_series, write_nifti

from covidct.errors import InputError
from covidct.io.dicom import read_dicom_series
from covidct.io.images import read_grayscale
from covidct.io.nifti import read_nifti
from covidct.io.readers import read_upload

N_TRUNCATIONS = 24
N_FLIPS = 24
PHANTOM = chest_phantom(3, 40, lung_slices=[1])


def _image_bytes(file_format: str) -> bytes:
    buffer = io.BytesIO()
    gray = (np.add.outer(np.arange(40), np.arange(48)) * 2).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(buffer, format=file_format)
    return buffer.getvalue()


def _dicom_bytes(tmp_path: Path, **options) -> bytes:
    return write_dicom_series(tmp_path / "series", PHANTOM[:1], **options)[0].read_bytes()


def _check_gray(array: np.ndarray) -> None:
    assert array.dtype == np.float32 and array.ndim == 2 and 0.0 <= array.min() and array.max() <= 1.0


def _check_volume(volume) -> None:
    assert volume.hu.dtype == np.float32 and volume.hu.ndim == 3 and volume.hu.shape[0] >= 1


# (id, valid file name, make its bytes from tmp_path, read a path, check the result)
FILES: list[tuple[str, str, Callable[[Path], bytes], Callable[[Path], object], Callable[[object], None]]] = [
    ("png", "slice.png", lambda t: _image_bytes("PNG"), read_grayscale, _check_gray),
    ("jpeg", "slice.jpg", lambda t: _image_bytes("JPEG"), read_grayscale, _check_gray),
    ("dicom", "slice.dcm", _dicom_bytes, lambda p: read_dicom_series([p]), _check_volume),
    (
        "dicom-rle",
        "slice.dcm",
        lambda t: _dicom_bytes(t, transfer_syntax=RLELossless),
        lambda p: read_dicom_series([p]),
        _check_volume,
    ),
    (
        "nifti",
        "ct.nii",
        lambda t: write_nifti(t / "valid.nii", PHANTOM).read_bytes(),
        read_nifti,
        _check_volume,
    ),
    (
        "nifti-gz",
        "ct.nii.gz",
        lambda t: write_nifti(t / "valid.nii.gz", PHANTOM).read_bytes(),
        read_nifti,
        _check_volume,
    ),
]


def variants(data: bytes, seed: int) -> list[tuple[str, bytes]]:
    """Seeded damaged copies: cut at random lengths (and to nothing), and 1 to 8 random bytes replaced."""
    rng = np.random.default_rng(seed)
    cuts = [0, 1, *sorted(rng.integers(2, len(data), N_TRUNCATIONS - 2))]
    damaged = [(f"cut at {n}", data[:n]) for n in cuts]
    for index in range(N_FLIPS):
        changed = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            changed[position] = int(rng.integers(0, 256))
        damaged.append((f"flip #{index}", bytes(changed)))
    return damaged


@pytest.mark.parametrize(
    ("name", "make", "read", "check"), [case[1:] for case in FILES], ids=[case[0] for case in FILES]
)
def test_every_damaged_copy_reads_or_raises_input_error(tmp_path, name, make, read, check):
    data = make(tmp_path)
    check(read(_write(tmp_path / name, data)))  # the undamaged file is valid
    outcomes = {"read": 0, "refused": 0}
    for label, damaged in variants(data, seed=len(name)):
        path = _write(tmp_path / f"damaged_{name}", damaged)
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # pydicom and nibabel warn about what they repair; only the outcome matters here
            try:
                result = read(path)
            except InputError as error:
                assert error.path == str(path), label
                outcomes["refused"] += 1
                continue
        check(result)
        outcomes["read"] += 1
    assert outcomes["refused"] >= 2  # at least the empty and 1-byte copies


@pytest.mark.parametrize(
    ("name", "make"), [(case[1], case[2]) for case in FILES], ids=[case[0] for case in FILES]
)
def test_damaged_uploads_never_stop_the_upload(tmp_path, name, make):
    uploads = [
        (f"{index}_{name}", damaged) for index, (_, damaged) in enumerate(variants(make(tmp_path), seed=7))
    ]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upload = read_upload(uploads)

    names = {upload_name for upload_name, _ in uploads}
    used = len(upload.images) + len(upload.volumes) + len(upload.failures)
    assert (
        used >= 1 and len(upload.failures) >= 1
    )  # DICOM variants share a series, so several files may give one result
    assert all(failure.path in names or failure.path.startswith("0_") for failure in upload.failures)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
