"""Small CT volumes for tests: HU phantoms, DICOM series written with pydicom, NIfTI
files written with nibabel.

Helpers, not fixtures, so any test module can write the variant it needs. Every DICOM file carries
made-up patient attributes (``PATIENT_ATTRIBUTES``) so tests can check that none of them leaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from synthetic import SLICE_PX, synthetic_ct_slice

from covidct.preprocess.window import LUNG_WINDOW, HuWindow

PATIENT_ATTRIBUTES = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-SECRET-4711",
    "PatientBirthDate": "19610203",
}
AIR_HU, TISSUE_HU, LUNG_HU = -1000.0, 40.0, -850.0


def gray_to_hu(gray: np.ndarray, window: HuWindow = LUNG_WINDOW) -> np.ndarray:
    """Undo ``window_hu``: uint8 or [0, 1] float grayscale -> float32 HU inside the window."""
    unit = gray.astype(np.float32) / 255.0 if gray.dtype == np.uint8 else gray.astype(np.float32)
    return unit * np.float32(window.width) + np.float32(window.level - window.width / 2.0)


def chest_phantom(n_slices: int, size: int, lung_slices: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """(n_slices, size, size) float32 HU: air, a soft-tissue body ellipse, and two lung ellipses
    on ``lung_slices`` only."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((xx - 0.5) / 0.44) ** 2 + ((yy - 0.5) / 0.34) ** 2 <= 1
    lungs = np.zeros_like(body)
    for centre in (0.3, 0.7):
        lungs |= ((xx - centre) / 0.14) ** 2 + ((yy - 0.5) / 0.22) ** 2 <= 1
    hu = np.full((n_slices, size, size), AIR_HU, np.float32)
    hu[:, body] = TISSUE_HU
    for index in lung_slices:
        hu[index, lungs] = LUNG_HU
    return hu + rng.normal(0, 10, hu.shape).astype(np.float32)


# Puts the synthetic training slices' lungs (gray 0.12) at -850 HU and body (0.6) at 40
# HU, as in a real chest CT.
TRAINING_LIKE_WINDOW = HuWindow(-145, 1854)


def training_like_phantom(
    n_slices: int, lung_slices: Sequence[int], *, covid: bool = False, seed: int = 0
) -> np.ndarray:
    """(n_slices, 64, 64) float32 HU: ``chest_phantom`` without lungs, and on ``lung_slices`` a
    synthetic training slice in HU.

    The tiny test models are trained on ``synthetic.synthetic_ct_slice`` PNGs; read through
    ``TRAINING_LIKE_WINDOW`` these lung slices look just like them, so the model's out-of-distribution
    guard passes them, while the card's lung window makes them look unlike anything it was trained on.
    """
    rng = np.random.default_rng(seed)
    hu = chest_phantom(n_slices, SLICE_PX, (), seed=seed)
    for index in lung_slices:
        hu[index] = gray_to_hu(synthetic_ct_slice(rng, is_covid=covid), TRAINING_LIKE_WINDOW)
    return hu


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    *,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    geometry: str = "position",
    multiframe: bool = False,
    modality: str = "CT",
    spacing_mm: tuple[float, float, float] = (2.5, 0.7, 0.7),
    attributes: dict[str, object] | None = None,
) -> list[Path]:
    """Write (N, H, W) ``hu`` as a CT series in ``folder``; return the files, in the (shuffled) order written.

    Rescale slope and intercept are drawn at random (seeded) and file names do not follow slice order,
    so a reader passes only if it applies the modality LUT and orders by geometry. ``geometry`` keeps
    "position" (ImagePositionPatient), or only "slice_location" or "instance" for the fallbacks;
    ``multiframe`` writes one file whose frames are stored shuffled, located by per-frame positions;
    ``attributes`` (keyword -> value) are set on every file, e.g. a StudyDate.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    slope = float(rng.choice([0.5, 1.0, 2.0]))
    intercept = float(rng.choice([-1024.0, -2048.0, 0.0]))
    stored = np.round((hu - intercept) / slope)
    is_signed = stored.min() < 0
    stored = stored.astype(np.int16 if is_signed else np.uint16)
    study, series = generate_uid(), generate_uid()
    order = rng.permutation(len(hu))
    if multiframe:
        dataset = _ct_dataset(
            study, series, stored[order], slope, intercept, is_signed, photometric, modality, spacing_mm
        )
        dataset.NumberOfFrames = len(hu)
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        dataset.PerFrameFunctionalGroupsSequence = [_frame_group(int(k), spacing_mm) for k in order]
        return [_save(dataset, folder / "multiframe.dcm", transfer_syntax)]
    paths = []
    for written, k in enumerate(order):
        dataset = _ct_dataset(
            study, series, stored[k], slope, intercept, is_signed, photometric, modality, spacing_mm
        )
        dataset.InstanceNumber = int(k) + 1
        for keyword, value in (attributes or {}).items():
            setattr(dataset, keyword, value)
        if geometry in ("position", "slice_location"):
            dataset.SliceLocation = float(k * spacing_mm[0])
        if geometry == "position":
            dataset.ImagePositionPatient = [-100.0, -120.0, float(k * spacing_mm[0])]
            dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        paths.append(_save(dataset, folder / f"IM{written:04d}.dcm", transfer_syntax))
    return paths


def write_nifti(
    path: Path,
    hu: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float] = (2.5, 0.7, 0.7),
    orientation: str = "LPS",
) -> Path:
    """Write (N, H, W) ``hu`` (slice 0 inferior, viewed as an axial CT) as NIfTI in LPS
    (DICOM-like) or RAS array order."""
    data = np.transpose(
        hu, (2, 1, 0)
    )  # (column: to the patient's left, row: to posterior, slice: to superior)
    z, y, x = spacing_mm
    affine = np.diag([-x, -y, z, 1.0])
    if orientation == "RAS":
        data, affine = data[::-1, ::-1, :], np.diag([x, y, z, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16), affine), path)
    return path


def _ct_dataset(
    study: str,
    series: str,
    stored: np.ndarray,
    slope: float,
    intercept: float,
    is_signed: bool,
    photometric: str,
    modality: str,
    spacing_mm: tuple[float, float, float],
) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = study, series, modality
    for keyword, value in PATIENT_ATTRIBUTES.items():
        setattr(dataset, keyword, value)
    dataset.Rows, dataset.Columns = stored.shape[-2:]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = (
        16,
        16,
        15,
        int(is_signed),
    )
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
    dataset.PixelSpacing, dataset.SliceThickness = [spacing_mm[1], spacing_mm[2]], spacing_mm[0]
    dataset.PixelData = np.ascontiguousarray(stored).tobytes()
    return dataset


def _frame_group(k: int, spacing_mm: tuple[float, float, float]) -> Dataset:
    position, group = Dataset(), Dataset()
    position.ImagePositionPatient = [-100.0, -120.0, float(k * spacing_mm[0])]
    group.PlanePositionSequence = [position]
    return group


def _save(dataset: Dataset, path: Path, transfer_syntax: str) -> Path:
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if UID(transfer_syntax).is_compressed:
        dataset.compress(transfer_syntax)  # RLE by pydicom; JPEG 2000 through pylibjpeg-openjpeg
    else:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax  # Deflated Explicit VR is deflated by save_as
    dataset.save_as(path, enforce_file_format=True)
    return path
