"""Shared fixtures: random start weights, tiny synthetic CT datasets (folder and CSV), the shared data.

Everything is made on the fly: no network, no downloads, and images small enough (64 x 64) that a
ResNet-50 trains on a few dozen of them in seconds on two CPU cores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from synthetic import SyntheticDataset, write_synthetic_dataset
from torchvision.models import resnet50

from covidct.data.manifest import read_manifest
from covidct.export.onnx import export_onnx
from covidct.model.card import read_card, write_card
from covidct.model.pretrained import resolve_pretrained
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Run torch on one thread for the whole session.

    On a small machine shared with other jobs, two OpenMP threads spin-waiting for each other made a
    6-image forward pass 50x slower (3.4 s instead of 0.06 s) and the suite several minutes long.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A randomly initialised torchvision ResNet-50 state dict in safetensors (the
    ``--weights PATH`` option)."""
    torch.manual_seed(0)
    state = {name: tensor.contiguous() for name, tensor in resnet50(weights=None).state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "resnet50_random.safetensors"
    save_file(state, path)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> SyntheticDataset:
    """8 patients x 3 slices per class (48 PNGs, 64 x 64), as class folders plus a patient/split CSV.

    Session-scoped and read-only: tests that need to change data copy it or make their own.
    """
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("tiny"), patients_per_class=8, slices_per_patient=3
    )


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real CT datasets), or skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_dataset, random_weights, tmp_path_factory) -> Path:
    """``fit`` on the tiny CSV dataset: 64 px, one epoch, random start weights (a few seconds
    on one core). Read-only."""
    config = TrainConfig(image_size=64, epochs=1, batch_size=16, device="cpu")
    out = tmp_path_factory.mktemp("tiny-model") / "model"
    return fit(
        read_manifest(tiny_dataset.csv), out, config, pretrained=resolve_pretrained(random_weights)
    ).model_dir


@pytest.fixture(scope="session")
def onnx_model_dir(tiny_dataset, random_weights, tmp_path_factory) -> Path:
    """A tiny trained model directory (64 px, one epoch, with its OOD guard) plus
    model.onnx and model.int8.onnx.

    Its calibration is set to the identity (temperature 1, no class bias): the one-epoch model's logit
    margins are so small that on some CPUs (an Intel host with AMX, 2026-12-06) the fitted temperature hits
    its 0.05 floor and multiplies every int8 logit error by 20, and the tests that use this model are about
    the exports' numerics, not about calibration.

    Read-only: tests that change files link the ones they keep into a folder of their own.
    """
    config = TrainConfig(image_size=64, epochs=1, batch_size=16, device="cpu")
    out = tmp_path_factory.mktemp("onnx-model") / "model"
    model_dir = fit(
        read_manifest(tiny_dataset.csv), out, config, pretrained=resolve_pretrained(random_weights)
    ).model_dir
    card = read_card(model_dir)
    write_card(
        model_dir,
        dataclasses.replace(
            card, decision=dataclasses.replace(card.decision, temperature=1.0, class_bias=())
        ),
    )
    export_onnx(model_dir)
    export_onnx(
        model_dir, int8=True
    )  # calibrated on the train split of the tiny dataset that model.json records
    return model_dir
