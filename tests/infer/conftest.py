"""A tiny trained model directory (with its out-of-distribution guard) shared by the inference tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidct.data.manifest import read_manifest
from covidct.model.pretrained import resolve_pretrained
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_dataset, random_weights, tmp_path_factory) -> Path:
    """``fit`` on the tiny CSV dataset: 64 px, one epoch, random start weights (a few seconds on one core)."""
    config = TrainConfig(image_size=64, epochs=1, batch_size=16, device="cpu")
    out = tmp_path_factory.mktemp("tiny-model") / "model"
    return fit(read_manifest(tiny_dataset.csv), out, config, pretrained=resolve_pretrained(random_weights)).model_dir
