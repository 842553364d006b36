"""PACS test fixtures: a real Orthanc (skipped with the install command when absent), the tiny model."""

from __future__ import annotations

import pytest
from orthanc import Orthanc, start_orthanc, why_orthanc_missing
from volumes import TRAINING_LIKE_WINDOW

from covidct import load_model
from covidct.pacs.identity import ModelIdentity


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
