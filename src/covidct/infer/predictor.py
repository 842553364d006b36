"""Run a trained model directory on image files: the Python API behind ``covidct predict``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from covidct.data.dataset import decode_slices
from covidct.errors import OptionError
from covidct.io.discover import InputFailure, discover_images
from covidct.model.card import ModelCard
from covidct.model.checkpoint import load_model_dir
from covidct.model.device import Device, resolve_device, supports_bf16
from covidct.model.forward import calibrated_probabilities, prepare_for_inference


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image: calibrated probabilities and the label at the card's threshold."""

    path: str
    prob_covid: float
    label: str
    probabilities: dict[str, float]


@dataclass(frozen=True)
class PredictionRun:
    """Predictions for the inputs that worked, and a failure (path + reason) for each one that did not."""

    predictions: list[Prediction]
    failures: list[InputFailure]
    skipped: list[InputFailure]


class Predictor:
    """A loaded model: weights, card-driven preprocessing, temperature and threshold."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, *, device: Device | str = Device.AUTO, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1; got {batch_size}")
        self.card = card
        self.device = resolve_device(device)
        self.use_bf16 = supports_bf16(self.device)
        self.batch_size = batch_size
        self.model = prepare_for_inference(model, self.device)

    @property
    def threshold(self) -> float:
        return self.card.decision.threshold

    def predict(self, inputs: Iterable[str | Path], *, progress: Callable[[int, int], None] | None = None) -> PredictionRun:
        """Predict every image in ``inputs`` (files, or folders walked recursively).

        Files that cannot be decoded become failures with a reason; the others are still predicted.
        """
        found = discover_images(inputs)
        predictions: list[Prediction] = []
        failures = list(found.failures)
        for start in range(0, len(found.paths), self.batch_size):
            chunk = found.paths[start : start + self.batch_size]
            decoded = decode_slices(chunk, self.card.preprocessing.image_size)
            failures.extend(decoded.failures)
            probabilities = self.probabilities(decoded.images)
            predictions.extend(self._prediction(str(chunk[i]), row) for i, row in zip(decoded.indices, probabilities, strict=True))
            if progress:
                progress(min(start + self.batch_size, len(found.paths)), len(found.paths))
        return PredictionRun(predictions, failures, found.skipped)

    def probabilities(self, slices: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (N, C) for (N, S, S) grayscale slices in [0, 1]."""
        return calibrated_probabilities(self.model, self.card, slices, device=self.device, use_bf16=self.use_bf16, batch_size=self.batch_size)

    def _prediction(self, path: str, probabilities: torch.Tensor) -> Prediction:
        card = self.card
        prob_covid = float(probabilities[card.positive_index])
        if prob_covid >= self.threshold:
            label = card.positive_class
        else:
            others = [(float(p), name) for name, p in zip(card.classes, probabilities, strict=True) if name != card.positive_class]
            label = max(others)[1]
        return Prediction(path, prob_covid, label, {name: float(p) for name, p in zip(card.classes, probabilities, strict=True)})


def load_model(model_dir: str | Path, *, device: Device | str = Device.AUTO, batch_size: int = 32) -> Predictor:
    """Load a model directory written by ``covidct train`` (on the CPU if there is no GPU).

    Raises:
        ModelDirError: missing or mismatched model files.
    """
    model, card = load_model_dir(Path(model_dir))
    return Predictor(model, card, device=device, batch_size=batch_size)
