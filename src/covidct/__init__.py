"""covidct: COVID-19 detection in chest CT slices with an ImageNet-pretrained ResNet-50.

Research use only: not a medical device, not for diagnosis.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from covidct.infer.predictor import (
        Explanation,
        ExplanationRun,
        Prediction,
        PredictionRun,
        Predictor,
        load_model,
    )
    from covidct.infer.result_files import write_predictions
    from covidct.model.card import ModelCard

# Written here and read by pyproject.toml, not looked up with importlib.metadata: importing that took 60 ms of
# every command, a fifth of `covidct --help` (issue 16).
__version__ = "0.1.0"
__all__ = [
    "Explanation",
    "ExplanationRun",
    "ModelCard",
    "Prediction",
    "PredictionRun",
    "Predictor",
    "__version__",
    "load_model",
    "write_predictions",
]

_HOME = {
    name: "covidct.infer.predictor"
    for name in ("Explanation", "ExplanationRun", "Prediction", "PredictionRun", "Predictor", "load_model")
} | {"ModelCard": "covidct.model.card", "write_predictions": "covidct.infer.result_files"}


def __getattr__(name: str) -> object:
    """Import the public API when it is first used (PEP 562).

    Importing any ``covidct`` module runs this file first; eager imports here would make a decoding
    worker process (which needs ``covidct.data`` only) load the predictor, ONNX Runtime and Grad-CAM too.
    """
    if name in _HOME:
        return getattr(import_module(_HOME[name]), name)
    raise AttributeError(f"module 'covidct' has no attribute {name!r}")
