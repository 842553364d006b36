"""Inference preparation: folding BatchNorm into the convolutions changes the speed, not the answers."""

from __future__ import annotations

import copy

import torch
from torch import nn

from covidct.model.forward import (
    fold_batch_norms,
    predict_logits,
    prepare_for_inference,
)
from covidct.model.network import build_resnet50
from covidct.preprocess.transforms import Preprocessing


def trained_looking_resnet() -> nn.Module:
    """A ResNet-50 whose BatchNorms hold non-trivial statistics and affine terms, as after training."""
    torch.manual_seed(0)
    model = build_resnet50(num_classes=2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_folding_leaves_no_batch_norm_and_the_same_logits():
    model = trained_looking_resnet()
    reference = copy.deepcopy(model)
    images = torch.rand(3, 3, 64, 64)

    folded = fold_batch_norms(model)

    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, nn.Conv2d) and module.bias is not None for module in folded.modules()) == 53
    with torch.no_grad():
        torch.testing.assert_close(folded(images), reference(images), rtol=1e-4, atol=1e-4)


def test_prepared_model_predicts_like_the_trained_one_in_fp32():
    model = trained_looking_resnet()
    slices = torch.rand(5, 64, 64, dtype=torch.float16)
    preprocessing = Preprocessing(image_size=64)
    expected = predict_logits(
        copy.deepcopy(model),
        slices,
        preprocessing=preprocessing,
        device=torch.device("cpu"),
        use_bf16=False,
        batch_size=2,
        tta_hflip=True,
    )

    prepared = prepare_for_inference(model, torch.device("cpu"))
    got = predict_logits(
        prepared,
        slices,
        preprocessing=preprocessing,
        device=torch.device("cpu"),
        use_bf16=False,
        batch_size=2,
        tta_hflip=True,
    )

    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
