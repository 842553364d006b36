"""Out-of-distribution guard: does an input look like the chest CT slices the model was trained on?

A CNN gives a confident class probability for anything, a holiday photo included. The guard measures
how far an input's penultimate-layer features lie from the training slices' features (Mahalanobis
distance to the nearest class mean under one shared, shrunk covariance: Lee et al., "A Simple
Unified Framework for Detecting Out-of-Distribution Samples", NeurIPS 2018) and flags inputs beyond
a threshold set on validation CT slices. The detector is stored beside the weights as
``ood.safetensors`` (class means, precision matrix, threshold: no pickle) and described in the
model card's ``ood`` section. Fitting it is part of training (``train.ood_fit``); this module holds
the fitted detector, its threshold rule and its file, in numpy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from covidct.errors import InputError, MissingOodDetectorWarning, ModelDirError
from covidct.model.architecture import FEATURE_DIM
from covidct.model.card import ModelCard
from covidct.model.integrity import file_sha256

OOD_FILE = "ood.safetensors"
METHOD = "mahalanobis"
NOT_CT_LABEL = "not-ct"
DEFAULT_PASS_RATE = 0.95


@dataclass(frozen=True)
class OodDetector:
    """Class means and shared precision of training features, and the distance above which inputs are flagged.

    Attributes:
        means: (C, D) float64 mean feature vector of each class's training slices.
        precision: (D, D) float64 inverse of the shared Ledoit-Wolf covariance.
        threshold: distances above it are out of distribution.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float = float("inf")

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Return the (N,) float64 Mahalanobis distance of (N, D) ``features`` to the nearest class mean."""
        x = np.asarray(features, dtype=np.float64)
        distances = []
        for mean in self.means:
            diff = x - mean
            distances.append(np.einsum("nd,nd->n", diff @ self.precision, diff))
        return np.sqrt(np.maximum(np.min(distances, axis=0), 0.0))

    def is_in_distribution(self, scores: np.ndarray) -> np.ndarray:
        """(N,) bool: True where the score is at or below the threshold."""
        return np.asarray(scores) <= self.threshold


def with_threshold(
    detector: OodDetector, val_scores: np.ndarray, *, pass_rate: float = DEFAULT_PASS_RATE
) -> OodDetector:
    """Return ``detector`` with the threshold that lets ``pass_rate`` of ``val_scores``
    (validation CT slices) pass.

    The "higher" quantile makes the realised pass rate on these scores at least ``pass_rate``.

    Raises:
        InputError: no validation scores.
    """
    scores = np.asarray(val_scores, dtype=np.float64)
    if scores.size == 0:
        raise InputError("the OOD threshold needs at least one validation slice")
    return OodDetector(detector.means, detector.precision, threshold_passing(scores, pass_rate))


def threshold_passing(scores: np.ndarray, pass_rate: float) -> float:
    """The score threshold that passes at least ``pass_rate`` of ``scores`` (the "higher" quantile)."""
    return float(np.quantile(scores, pass_rate, method="higher"))


def not_ct_message(score: float, threshold: float) -> str:
    """The plain message a flagged input gets instead of a COVID probability."""
    return (
        "does not look like a chest CT slice the model was trained "
        f"on (OOD score {score:.1f} > threshold {threshold:.1f})"
    )


def save_detector(model_dir: Path, detector: OodDetector, **facts: object) -> dict:
    """Write ``model_dir/ood.safetensors``; return the model card's ``ood`` section describing it.

    Args:
        model_dir: the model directory.
        detector: a fitted detector with its threshold.
        **facts: how it was fitted (validation pass rate, slice counts...), copied into the section.
    """
    path = Path(model_dir) / OOD_FILE
    # float32 on disk halves the 2048 x 2048 precision matrix (16 MiB); distances are computed in float64.
    tensors = {
        "means": detector.means.astype(np.float32),
        "precision": detector.precision.astype(np.float32),
        "threshold": np.array([detector.threshold]),
    }
    save_file(tensors, path, metadata={"format": "covidct-ood", "method": METHOD})
    return {
        "method": METHOD,
        "features": (
            "penultimate layer (global average pool), averaged with the mirror image when decision.tta_hflip"
        ),
        "feature_dim": int(detector.means.shape[1]),
        "threshold": detector.threshold,
        **facts,
        "file": OOD_FILE,
        "sha256": file_sha256(path),
    }


def load_detector(model_dir: Path, card: ModelCard) -> OodDetector | None:
    """Read the detector that ``card.ood`` describes, or warn and return None for a model trained without one.

    Raises:
        ModelDirError: the card names a detector whose file is missing, modified or unreadable.
    """
    if card.ood is None:
        warnings.warn(
            f"{model_dir}: model.json has no out-of-distribution "
            "detector (trained with an older covidct), so no "
            "input is flagged as not a chest CT slice; retrain with 'covidct train' to get the guard",
            MissingOodDetectorWarning,
            stacklevel=3,
        )
        return None
    path = Path(model_dir) / OOD_FILE
    if not path.is_file():
        raise ModelDirError(
            f"no {OOD_FILE} beside model.json, whose 'ood' section names it; copy the whole model directory",
            path=model_dir,
        )
    if file_sha256(path) != card.ood.get("sha256"):
        raise ModelDirError(
            f"{OOD_FILE} does not match the hash in model.json; "
            "the directory was modified or mixes two models",
            path=model_dir,
        )
    try:
        tensors = load_file(path)
        detector = OodDetector(
            tensors["means"].astype(np.float64),
            tensors["precision"].astype(np.float64),
            float(tensors["threshold"][0]),
        )
    except (SafetensorError, OSError, KeyError, IndexError) as error:
        raise ModelDirError(f"cannot read {OOD_FILE} ({error})", path=model_dir) from None
    if detector.means.shape[1:] != (FEATURE_DIM,) or detector.precision.shape != (FEATURE_DIM, FEATURE_DIM):
        raise ModelDirError(
            f"{OOD_FILE} holds means {detector.means.shape} and precision {detector.precision.shape}; "
            f"expected ({FEATURE_DIM},) features",
            path=model_dir,
        )
    return detector
