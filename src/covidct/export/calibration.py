"""Training slices for int8 calibration: which data, which rows, and the reader onnxruntime pulls them from.

The model directory records where its training data was (``data.origin`` in model.json) but not the
slices themselves, so calibration re-reads that dataset (or the one given with ``--calibration``),
takes its train split as ``covidct train`` made it, and samples a fixed number of slices from it.
Test slices are never used, so an evaluation of the int8 model stays honest.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from covidct.data.dataset import decode_slices
from covidct.data.manifest import Manifest
from covidct.data.splits import assign_splits
from covidct.errors import CovidctWarning, InputError, OptionError
from covidct.export.calibration_slices import DEFAULT_CALIBRATION_SLICES
from covidct.infer.engines import INPUT_NAME
from covidct.model.card import ModelCard
from covidct.preprocess.transforms import Preprocessing, normalize

SAMPLE_SEED = 0
READER_BATCH = 8


@dataclass(frozen=True)
class CalibrationSet:
    """Decoded calibration slices and where they came from (recorded in the export's settings file).

    Attributes:
        slices: (N, S, S) float16 grayscale in [0, 1].
        facts: data path, manifest hash, split, counts and sampling seed.
    """

    slices: np.ndarray
    facts: dict


def default_calibration_data(card: ModelCard, model_dir: Path) -> Path:
    """The training dataset recorded in the card (``data.origin``), if it still exists.

    Raises:
        OptionError: the card records none, or it is gone; the message asks for ``--calibration``.
    """
    origin = card.data.get("origin")
    if origin and Path(origin).exists():
        return Path(origin)
    where = (
        f"the training data recorded in {model_dir / 'model.json'} ({origin}) is not there"
        if origin
        else f"{model_dir / 'model.json'} records no training data"
    )
    raise OptionError(
        f"--int8 calibrates on training slices, but {where}; "
        "pass --calibration DATA (the training folder or CSV)"
    )


def calibration_set(
    manifest: Manifest,
    card: ModelCard,
    *,
    n_slices: int = DEFAULT_CALIBRATION_SLICES,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationSet:
    """Decode up to ``n_slices`` slices of ``manifest``'s train split, sampled with a fixed seed.

    Without a split column the train split is rebuilt as ``covidct train`` did (same seed and
    fractions, grouped by patient).

    Raises:
        OptionError: ``n_slices`` < 1.
        InputError: the classes differ from the model's, or no train slice decodes.

    Warns:
        CovidctWarning: ``manifest`` is not the dataset the model was trained on (by its hash).
    """
    if n_slices < 1:
        raise OptionError(f"--calibration-slices must be at least 1; got {n_slices}")
    if tuple(manifest.classes) != tuple(card.classes):
        raise InputError(
            f"classes {list(manifest.classes)} differ from the model's "
            f"{list(card.classes)}; pass the model's training data",
            path=manifest.origin,
        )
    is_training_data = manifest.sha256() == card.data.get("manifest_sha256")
    if not is_training_data:
        warnings.warn(
            f"{manifest.origin}: not the data this model was trained on (manifest "
            "hash differs); int8 ranges are calibrated on its train split anyway",
            CovidctWarning,
            stacklevel=2,
        )
    if not manifest.has_splits:
        training = card.training
        manifest = assign_splits(
            manifest,
            val_fraction=training.get("val_fraction", 0.15),
            test_fraction=training.get("test_fraction", 0.15),
            seed=training.get("seed", 0),
        )
    train = manifest.select("train")
    if not train.samples:
        raise InputError(
            "no rows in the train split to calibrate on; pass the model's training data with --calibration",
            path=manifest.origin,
        )
    rng = np.random.default_rng(SAMPLE_SEED)
    chosen = np.sort(rng.choice(len(train.samples), size=min(n_slices, len(train.samples)), replace=False))
    decoded = decode_slices([train.samples[i].path for i in chosen], card.preprocessing, progress=progress)
    if len(decoded.indices) == 0:
        first = decoded.failures[0]
        raise InputError(
            f"none of the {len(chosen)} sampled train slices could "
            f"be decoded (first: {first.path}: {first.reason})",
            path=manifest.origin,
        )
    facts = {
        "data": str(manifest.origin),
        "manifest_sha256": manifest.sha256(),
        "is_training_data": is_training_data,
        "split": "train",
        "n_train_slices": len(train.samples),
        "n_slices": len(decoded.indices),
        "n_failed": len(decoded.failures),
        "sampling": f"uniform without replacement, numpy default_rng({SAMPLE_SEED})",
    }
    return CalibrationSet(decoded.images, facts)


class SliceReader(CalibrationDataReader):
    """Feeds normalised (B, 3, S, S) float32 batches of calibration slices to onnxruntime's calibrator."""

    def __init__(
        self, slices: np.ndarray, preprocessing: Preprocessing, *, batch_size: int = READER_BATCH
    ) -> None:
        self.slices = slices
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.slices):
            return None
        batch = np.asarray(self.slices[self.start : self.start + self.batch_size], dtype=np.float32)[:, None]
        self.start += self.batch_size
        return {INPUT_NAME: normalize(batch, self.preprocessing)}

    def rewind(self) -> None:
        self.start = 0
