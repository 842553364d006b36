"""What a model card says about the network, as plain values: readable without torch (the ONNX engines)."""

from __future__ import annotations

from enum import StrEnum

FEATURE_DIM = 2048  # ResNet-50's pooled penultimate features: the head's input and the OOD guard's


class StrideVariant(StrEnum):
    """Where the downsampling stride sits in the first block of layers 2-4.

    Keras' ResNet50 (the original He et al. model, "v1") strides the first 1x1 conv; torchvision
    ("v1.5") strides the 3x3 conv. Shapes match, so the variant must follow the weights' origin for
    the ImageNet classifier to be reproduced exactly.
    """

    V1 = "v1"
    V1_5 = "v1.5"
