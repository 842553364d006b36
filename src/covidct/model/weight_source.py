"""The ``--source`` choice of ImageNet weights, apart from the fetching code so that the CLI can offer it
without importing torch."""

from __future__ import annotations

from enum import StrEnum


class WeightSource(StrEnum):
    """Where ImageNet weights come from; ``auto`` tries torchvision, then keras-npm."""

    AUTO = "auto"
    TORCHVISION = "torchvision"
    KERAS_NPM = "keras-npm"
