"""The torch engine: the network itself, folded for inference, behind the engines' numpy interface."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidct.infer.engine_kind import Engine
from covidct.infer.engines import InferenceEngine
from covidct.model.forward import predict_logits
from covidct.model.network import FEATURE_DIM, extract_features
from covidct.preprocess.transforms import Preprocessing


class TorchEngine(InferenceEngine):
    """A torch network on ``device``: inference mode, channels_last, bf16 autocast if ``use_bf16``.

    Also the scorer of training-time validation and of the OOD guard's fit, so those see the network
    exactly as prediction does. Slices may be numpy or torch; the outputs are numpy.
    """

    kind = Engine.TORCH

    def __init__(self, model: nn.Module, *, device: torch.device, use_bf16: bool) -> None:
        self.model = model
        self.device = device
        self.use_bf16 = use_bf16
        self.num_classes = model.fc.out_features

    def features_and_logits(
        self,
        slices: np.ndarray | torch.Tensor,
        *,
        preprocessing: Preprocessing,
        batch_size: int,
        tta_hflip: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(slices) == 0:
            return np.empty((0, FEATURE_DIM), np.float32), np.empty((0, self.num_classes), np.float32)
        slices = torch.as_tensor(slices)
        outputs = predict_logits(
            self,
            slices,
            preprocessing=preprocessing,
            device=self.device,
            use_bf16=self.use_bf16,
            batch_size=batch_size,
            tta_hflip=tta_hflip,
        ).numpy()
        return outputs[:, :FEATURE_DIM], outputs[:, FEATURE_DIM:]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048 + C) features then logits of normalised (N, 3, S, S) ``images`` on ``device``."""
        features = extract_features(self.model, images)
        return torch.cat([features, self.model.fc(features)], dim=1)
