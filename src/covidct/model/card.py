"""The model card (model.json): everything needed to rebuild, trust and reproduce a trained model."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from covidct.errors import ModelDirError
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.architecture import StrideVariant
from covidct.preprocess.transforms import Preprocessing

CARD_FILE = "model.json"
# ResNet-50 halves the input five times: below 32 px layer4 has nothing left; above 1024 px a slice costs 21x
# the 224 px work, past any CT slice's detail.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


# The study rule of a card written before study-level prediction, and the fallback when validation cannot
# choose one (see ``covidct.train.study_rule``): the mean of the top 25% slices, so focal findings are not
# diluted by many normal slices as in a plain mean, nor hang on one noisy slice as with the maximum.
DEFAULT_STUDY_AGGREGATE = "topk"
DEFAULT_STUDY_TOPK_FRACTION = 0.25


@dataclass(frozen=True)
class Decision:
    """How logits become a label: calibration, test-time flips, and the operating threshold.

    Calibrated probabilities are ``softmax(logits / temperature + class_bias)`` (``probabilities``); a card
    written before the bias existed has none (``class_bias`` empty, read as zeros).

    A study (DICOM series, NIfTI volume) gets one probability from its slices' by ``study_aggregate``
    (mean, max or topk, the mean of the top ``study_topk_fraction`` of its slices); ``study_rule_source``
    says whether validation data chose it or it is the default, and why.
    """

    threshold: float
    threshold_rule: str
    temperature: float = 1.0
    class_bias: tuple[float, ...] = ()
    tta_hflip: bool = False
    study_aggregate: str = DEFAULT_STUDY_AGGREGATE
    study_topk_fraction: float | None = DEFAULT_STUDY_TOPK_FRACTION
    study_rule_source: str = "default: the model card predates study-level rules"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, C) calibrated class probabilities from (N, C) logits, as every path (predict, evaluate,
        export check) computes them."""
        return calibrated_probabilities(logits, self.temperature, self.class_bias)


def calibrated_probabilities(
    logits: np.ndarray, temperature: float, class_bias: tuple[float, ...] = ()
) -> np.ndarray:
    """``softmax(logits / temperature + class_bias)`` over axis 1, in the logits' dtype (no bias when empty).

    ``logits``: (N, C) numpy array (or a CPU tensor, read through ``np.asarray``).
    """
    scaled = np.asarray(logits) / temperature
    if class_bias:
        scaled = scaled + np.asarray(class_bias, dtype=scaled.dtype)
    exponentials = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ModelCard:
    """Typed view of model.json. ``to_dict`` gives exactly the documented keys (a test pins them).

    ``ood`` describes the out-of-distribution detector stored beside the weights (see
    ``covidct.model.ood``); it is None for models trained before the guard existed.
    """

    classes: tuple[str, ...]
    positive_class: str
    stride_variant: StrideVariant
    preprocessing: Preprocessing
    decision: Decision
    weights: dict
    data: dict
    training: dict
    validation_metrics: dict
    environment: dict
    covidct_version: str
    created: str
    intended_use: str = RESEARCH_USE_STATEMENT
    checkpoint_sha256: str = ""
    architecture: dict = field(default_factory=dict)
    ood: dict | None = None

    def __post_init__(self) -> None:
        if self.positive_class not in self.classes:
            raise ValueError(
                f"positive class '{self.positive_class}' is not one of the classes {list(self.classes)}"
            )
        if not 0.0 <= self.decision.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {self.decision.threshold}")
        if not self.decision.temperature > 0:
            raise ValueError(f"temperature must be positive; got {self.decision.temperature}")
        if self.decision.class_bias and len(self.decision.class_bias) != len(self.classes):
            raise ValueError(
                "class_bias needs one value per class "
                f"({len(self.classes)}); got {list(self.decision.class_bias)}"
            )
        if not all(isinstance(b, int | float) and math.isfinite(b) for b in self.decision.class_bias):
            raise ValueError(f"class_bias must be finite numbers; got {list(self.decision.class_bias)}")
        size = self.preprocessing.image_size
        if not (
            isinstance(size, int) and not isinstance(size, bool) and MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE
        ):
            raise ValueError(
                "preprocessing.image_size must be a whole number of pixels "
                f"from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}; got {size!r}"
            )
        if self.decision.study_aggregate not in ("mean", "max", "topk"):
            raise ValueError(
                f"study_aggregate must be mean, max or topk; got {self.decision.study_aggregate!r}"
            )
        if (
            self.decision.study_aggregate == "topk"
            and not 0.0 < (self.decision.study_topk_fraction or 0.0) <= 1.0
        ):
            raise ValueError(
                f"study_topk_fraction must be in (0, 1] for topk; got {self.decision.study_topk_fraction!r}"
            )

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["classes"] = list(self.classes)
        values["stride_variant"] = str(self.stride_variant)
        values["preprocessing"] = self.preprocessing.to_dict()
        values["architecture"] = {
            "name": "torchvision resnet50",
            "stride_variant": str(self.stride_variant),
            "head": f"linear 2048 -> {len(self.classes)}, softmax",
            "input": f"(N, 3, {self.preprocessing.image_size}, {self.preprocessing.image_size})",
        }
        return values

    @classmethod
    def from_dict(cls, values: dict) -> ModelCard:
        values = dict(values)
        values["classes"] = tuple(values["classes"])
        values["stride_variant"] = StrideVariant(values["stride_variant"])
        values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
        values["decision"] = Decision(
            **{**values["decision"], "class_bias": tuple(values["decision"].get("class_bias", ()))}
        )
        return cls(**values)


def write_card(model_dir: Path, card: ModelCard) -> Path:
    """Write ``model_dir/model.json`` (pretty, UTF-8) and return its path."""
    path = Path(model_dir) / CARD_FILE
    path.write_text(json.dumps(card.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def read_card(model_dir: Path) -> ModelCard:
    """Read ``model_dir/model.json``.

    Raises:
        ModelDirError: the file is missing, not JSON (NaN and Infinity included: ``write_card`` never writes
            them), lacks the documented keys, or has a value out of range.
    """
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise ModelDirError(
            f"no {CARD_FILE}; expected a model directory written by 'covidct train'", path=model_dir
        )
    try:
        return ModelCard.from_dict(
            json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        )
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as error:
        raise ModelDirError(f"not a valid covidct model card ({error})", path=path) from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a model card may hold")
