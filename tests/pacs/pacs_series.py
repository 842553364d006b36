"""Synthetic CT series for the PACS tests, dated today so that ``pacs watch``'s date window finds them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from volumes import training_like_phantom, write_dicom_series

TODAY = dt.date.today().strftime("%Y%m%d")


@dataclass(frozen=True)
class Series:
    """DICOM files of one series written for a test, and its UIDs."""

    files: list[Path]
    study_uid: str
    series_uid: str


def write_series(
    folder: Path, *, n_slices: int = 10, lung_slices=range(2, 8), modality: str = "CT", seed: int = 0
) -> Series:
    """A synthetic 64 x 64 series dated today; the tiny model sees lungs through ``TRAINING_LIKE_WINDOW``."""
    hu = training_like_phantom(n_slices, lung_slices, covid=True, seed=seed)
    files = write_dicom_series(folder, hu, modality=modality, seed=seed, attributes={"StudyDate": TODAY})
    header = dcmread(files[0], stop_before_pixels=True)
    return Series(files, str(header.StudyInstanceUID), str(header.SeriesInstanceUID))
