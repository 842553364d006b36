"""PACS test fixtures: a real Orthanc (skipped with the install command when absent), CT series."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # orthanc.py, shared with bench/pacs.py

from orthanc import Orthanc, start_orthanc, why_orthanc_missing
from volumes import TRAINING_LIKE_WINDOW, training_like_phantom, write_dicom_series

from covidct import load_model
from covidct.pacs.identity import ModelIdentity

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
    from pydicom import dcmread

    header = dcmread(files[0], stop_before_pixels=True)
    return Series(files, str(header.StudyInstanceUID), str(header.SeriesInstanceUID))


@pytest.fixture
def orthanc(tmp_path) -> Orthanc:
    """A fresh Orthanc with DICOMweb on loopback ports and its storage in ``tmp_path``."""
    reason = why_orthanc_missing()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return load_model(tiny_model_dir, window=TRAINING_LIKE_WINDOW)


@pytest.fixture(scope="module")
def model_identity(tiny_model_dir, predictor) -> ModelIdentity:
    return ModelIdentity.of(
        tiny_model_dir, checkpoint_sha256=predictor.card.checkpoint_sha256, covidct_version="test"
    )
