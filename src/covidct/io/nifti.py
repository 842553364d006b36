"""NIfTI CT volumes (``.nii``, ``.nii.gz``) -> a ``Volume`` of axial slices in Hounsfield units.

Privacy: a NIfTI header carries no patient attributes, but its file name may; the study is referred
to by ``privacy_key(source)`` in keys, and by the path the user named in outputs.
"""

from __future__ import annotations

import gzip
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidct.errors import CovidctError, InputError
from covidct.io.budget import MAX_PIXELS, VoxelBudget
from covidct.io.volume import Volume, check_volume_size, privacy_key

if TYPE_CHECKING:
    import nibabel as nib

NiftiSource = Path | tuple[str, bytes]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI2_HEADER_BYTES = 540
# A CT volume holds air outside the body (about -1000 HU). A volume whose 1st percentile is above this
# was not stored in HU (8-bit images, MR, a label map) and windowing it would show nothing meaningful.
_AIR_CEILING_HU = -500.0
_HU_SAMPLE_VOXELS = 1_000_000


def is_nifti(name: str | Path) -> bool:
    """True for a name ending in ``.nii`` or ``.nii.gz`` (any case)."""
    return str(name).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(
    source: NiftiSource, *, max_pixels: int = MAX_PIXELS, budget: VoxelBudget | None = None
) -> Volume:
    """Read a 3-D NIfTI CT volume, reoriented to RAS+, as axial slices from inferior to superior.

    Values go through the header's ``scl_slope`` / ``scl_inter`` and are taken as HU. Each slice is
    laid out as radiologists view an axial CT (as DICOM stores it): anterior at the top, the
    patient's right on the left of the image.

    Args:
        source: a path, or an upload's ``(name, bytes)`` read in memory.
        max_pixels: per-slice pixel cap, checked from the header before the data is read.
        budget: decoded voxels this volume counts against, reserved from the header before the data is read.

    Raises:
        InputError: unreadable or truncated file, a 4-D (or 2-D) volume, no slice, sizes over the caps,
            or values that do not look like HU (NaN or infinite ones included).
        UploadTooLargeError: over ``budget``.
    """
    import nibabel as nib  # imported when a volume is read, not by --help (it pulls scipy)

    name = source[0] if isinstance(source, tuple) else str(source)
    try:
        image = _load(source)
        shape = tuple(int(n) for n in image.header.get_data_shape())
        _check_shape(name, shape, nib.io_orientation(image.affine), max_pixels)
        if budget is not None:
            budget.reserve(name, int(np.prod(shape[:3])))
        canonical = nib.as_closest_canonical(image if len(shape) == 3 else image.slicer[..., 0])
        data = canonical.get_fdata(dtype=np.float32)
    except CovidctError:  # our own checks' errors, the budget's included
        raise
    except FileNotFoundError:
        raise InputError("file not found", path=name) from None
    except Exception as error:  # noqa: BLE001 - nibabel, gzip and zlib raise many types on corrupt files
        raise InputError(
            f"not a readable NIfTI volume ({type(error).__name__}: {error})", path=name
        ) from None
    data = data.reshape(data.shape[:3])
    _check_looks_like_hu(name, data)
    # RAS+ array axes (x: to the right, y: to anterior, z: to superior) -> (z, rows from
    # anterior, columns from the right).
    hu = np.ascontiguousarray(np.transpose(data[::-1, ::-1, :], (2, 1, 0)))
    zooms = canonical.header.get_zooms()[:3]
    positions = np.array([(canonical.affine @ np.array([0.0, 0.0, k, 1.0]))[2] for k in range(hu.shape[0])])
    key = privacy_key(name)
    return Volume(
        source=name,
        study_key=key,
        series_key=key,
        hu=hu,
        slice_names=tuple(f"{Path(name).name}#{k}" for k in range(hu.shape[0])),
        slice_positions_mm=positions,
        spacing_mm=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
    )


def _load(source: NiftiSource) -> nib.Nifti1Image:
    import nibabel as nib
    from nibabel.fileholders import FileHolder

    if not isinstance(source, tuple):
        return nib.load(source)
    data = source[1]
    if not data:
        raise InputError("empty file", path=source[0])
    # Streamed, never decompressed whole: the header's shape is checked before the data is read.
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == _GZIP_MAGIC else io.BytesIO(data)
    header_bytes = int.from_bytes(stream.read(4), "little")
    stream.seek(0)
    klass = nib.Nifti2Image if header_bytes == _NIFTI2_HEADER_BYTES else nib.Nifti1Image
    holder = FileHolder(fileobj=stream)
    return klass.from_file_map({"header": holder, "image": holder})


def _check_shape(name: str, shape: tuple[int, ...], orientation: np.ndarray, max_pixels: int) -> None:
    is_3d = len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)
    if not is_3d:
        fix = (
            "split a 4-D series into 3-D files"
            if len(shape) > 3
            else "save the series as one 3-D file, or this slice windowed as a PNG"
        )
        raise InputError(
            f"{len(shape)}-D volume of shape {shape}; expected one 3-D CT volume ({fix})",
            path=name,
        )
    canonical = [
        0,
        0,
        0,
    ]  # the (x, y, z) shape once reoriented to RAS+, worked out from the affine without reading data
    for axis, (ras_axis, _) in enumerate(orientation):
        canonical[int(ras_axis)] = shape[axis]
    columns, rows, n_slices = canonical
    check_volume_size(name, (n_slices, rows, columns), max_pixels=max_pixels)


def _check_looks_like_hu(name: str, data: np.ndarray) -> None:
    # Percentiles of an every-k-th-voxel sample (about a million voxels): np.percentile copies its input,
    # and a full copy of a 512^3 volume would cost as much memory again as the volume the budget reserved.
    step = max(1, math.ceil((data.size / _HU_SAMPLE_VOXELS) ** (1 / 3)))
    if not np.isfinite(data).all():
        raise InputError("NaN or infinite voxel values; expected a CT volume in finite HU", path=name)
    low, high = np.percentile(data[::step, ::step, ::step], [1, 99])
    if low > _AIR_CEILING_HU:
        raise InputError(
            f"values from {low:g} to {high:g} (1st to 99th percentile) do not look like CT Hounsfield units "
            f"(air outside the body is about -1000); expected a CT volume in HU",
            path=name,
        )
