"""The smallest valid model card, for tests that need a model directory or a ``Predictor`` without training
(a helper, not a fixture)."""

from __future__ import annotations

from covidct.model.card import Decision, ModelCard
from covidct.model.network import StrideVariant
from covidct.preprocess.transforms import Preprocessing

TINY_IMAGE_SIZE = 32


def tiny_card(classes: tuple[str, ...] = ("COVID", "non-COVID"), **decision) -> ModelCard:
    """A card for ``TINY_IMAGE_SIZE`` px inputs with nothing recorded about weights, data or training.

    ``decision``: ``Decision`` fields over threshold 0.5 chosen by Youden's J.
    """
    return ModelCard(
        classes=classes,
        positive_class="COVID",
        stride_variant=StrideVariant.V1_5,
        preprocessing=Preprocessing(image_size=TINY_IMAGE_SIZE),
        decision=Decision(**{"threshold": 0.5, "threshold_rule": "youden_j", **decision}),
        weights={},
        data={},
        training={},
        validation_metrics={},
        environment={},
        covidct_version="0.1.0",
        created="2025-01-01T00:00:00+00:00",
    )
