"""The ``--train-layers`` choice, apart from the network: the CLI offers it without importing torch."""

from __future__ import annotations

from enum import StrEnum


class TrainLayers(StrEnum):
    """How deep fine-tuning reaches: the head only, or the head plus the last stage(s)."""

    HEAD = "head"
    LAYER4 = "layer4"
    LAYER3 = "layer3"
    ALL = "all"
