"""One entry point per kind of input, whatever its format: a discovered volume, a manifest path, an upload.

Each picks the reader (``dicom``, ``nifti``, ``images``) from the name and content, so callers
never branch on file formats themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidct.errors import InputError, UploadTooLargeError
from covidct.io.budget import MAX_PIXELS, VoxelBudget
from covidct.io.dicom import group_dicom_series, is_dicom, read_dicom_series
from covidct.io.discover import VolumeInput, VolumeKind
from covidct.io.failures import InputFailure
from covidct.io.images import read_grayscale
from covidct.io.nifti import is_nifti, read_nifti
from covidct.io.volume import Volume


def read_volume(
    item: VolumeInput,
    *,
    max_pixels: int = MAX_PIXELS,
    budget: VoxelBudget | None = None,
    defer_pixels: bool = False,
) -> Volume:
    """Read a volume found by ``iter_inputs`` (a DICOM series or a NIfTI file), within
    ``budget`` when one is given.

    ``defer_pixels``: a DICOM series' pixels are decoded as ``Volume.hu_until`` asks for them (see
    ``read_dicom_series``); a NIfTI file is read whole either way.

    Raises:
        InputError: the reader's errors, naming the file (``UploadTooLargeError`` over ``budget``).
    """
    if item.kind is VolumeKind.NIFTI:
        return read_nifti(item.files[0], max_pixels=max_pixels, budget=budget)
    return read_dicom_series(
        item.files, source=item.source, max_pixels=max_pixels, budget=budget, defer_pixels=defer_pixels
    )


def is_volume_path(path: Path) -> bool:
    """True when ``path`` names a CT volume (a folder of DICOM files, a DICOM file, a NIfTI
    file), not a 2-D image."""
    return path.is_dir() or is_nifti(path.name) or is_dicom(path)


def read_path_volumes(path: Path, *, max_pixels: int = MAX_PIXELS) -> list[Volume]:
    """Read the volumes a manifest row names: a NIfTI file, a DICOM file, or every series of
    the DICOM files in a folder.

    A folder is not walked into: its subfolders may be other studies, which need rows of their own.

    Raises:
        InputError: an unreadable folder, a folder without DICOM files, or any file of its series
            unreadable (so a row is used whole or not at all).
    """
    if is_nifti(path.name):
        return [read_nifti(path, max_pixels=max_pixels)]
    if not path.is_dir():
        return [read_dicom_series([path], max_pixels=max_pixels)]
    try:
        files = sorted(
            p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom(p)
        )
    except OSError as error:
        raise InputError(f"cannot read folder ({error.strerror})", path=path) from None
    if not files:
        raise InputError(
            "no DICOM files in this folder (subfolders are not "
            "searched); name a series folder, a DICOM or a NIfTI file",
            path=path,
        )
    groups, failures = group_dicom_series(files)
    if failures:
        raise InputError(
            f"{len(failures)} unreadable DICOM file(s), first {failures[0].path}: {failures[0].reason}",
            path=path,
        )
    return [read_dicom_series(group, source=str(path), max_pixels=max_pixels) for group in groups]


@dataclass(frozen=True)
class Upload:
    """Uploaded files, decoded in memory.

    Attributes:
        images: 2-D slices as (name, (H, W) float32 in [0, 1]), decoded as ``read_grayscale`` does.
        volumes: DICOM files grouped into one volume per series, and NIfTI files.
        failures: uploads that could not be used, with the reason.
    """

    images: list[tuple[str, np.ndarray]] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    failures: list[InputFailure] = field(default_factory=list)


def read_upload(
    files: Sequence[tuple[str, bytes]], *, max_pixels: int = MAX_PIXELS, budget: VoxelBudget | None = None
) -> Upload:
    """Decode uploaded ``(name, bytes)`` files without writing them to disk; a bad file is
    a failure, the rest go on.

    DICOM files (a ``.dcm`` name or the DICM marker) are grouped by series across the whole upload.

    Raises:
        UploadTooLargeError: the files' decoded voxels are over ``budget`` (the whole upload is refused).
        BusyError: ``budget``'s shared pool is held by other requests.
    """
    upload = Upload()
    dicom: list[tuple[str, bytes]] = []
    for name, data in files:
        try:
            if is_nifti(name):
                upload.volumes.append(read_nifti((name, data), max_pixels=max_pixels, budget=budget))
            elif is_dicom((name, data)):
                dicom.append((name, data))
            else:
                upload.images.append(
                    (name, read_grayscale((name, data), max_pixels=max_pixels, budget=budget))
                )
        except UploadTooLargeError:
            raise
        except InputError as error:
            upload.failures.append(InputFailure.from_error(error, name))
    groups, failures = group_dicom_series(dicom)
    upload.failures.extend(failures)
    for group in groups:
        source = group[0][0] if len(group) == 1 else f"{group[0][0]} (+{len(group) - 1} files of its series)"
        try:
            upload.volumes.append(
                read_dicom_series(group, source=source, max_pixels=max_pixels, budget=budget)
            )
        except UploadTooLargeError:
            raise
        except InputError as error:
            upload.failures.append(InputFailure.from_error(error, source))
    return upload
