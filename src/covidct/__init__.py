"""covidct: COVID-19 detection in chest CT slices with an ImageNet-pretrained ResNet-50.

Research use only: not a medical device, not for diagnosis.
"""

from importlib.metadata import version as _version

from covidct.infer.predictor import (
    Explanation,
    ExplanationRun,
    Prediction,
    PredictionRun,
    Predictor,
    load_model,
)
from covidct.model.card import ModelCard

__version__ = _version("covidct")
__all__ = ["Explanation", "ExplanationRun", "ModelCard", "Prediction", "PredictionRun", "Predictor", "__version__", "load_model"]
