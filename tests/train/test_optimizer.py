"""The optimizer's parameter groups: the head at ``lr``, the backbone slower, and with ``layer_lr_decay`` each
block slower again the further it sits below layer4; every trained parameter in exactly one group."""

from __future__ import annotations

import pytest

from covidct.model.network import TrainLayers, build_resnet50, set_trainable
from covidct.train.config import TrainConfig
from covidct.train.epochs import build_optimizer


def learning_rates(train_layers: TrainLayers, **options) -> dict[str, float]:
    """The learning rate each trainable parameter (by name) gets; fails if one sits in two groups or none."""
    model = build_resnet50(num_classes=2)
    set_trainable(model, train_layers)
    optimizer = build_optimizer(model, model, TrainConfig(lr=1e-3, backbone_lr_factor=0.1, **options))
    names = {id(p): name for name, p in model.named_parameters()}
    grouped = [(names[id(p)], group["lr"]) for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(dict(grouped)), "a parameter sits in two groups"
    assert {name for name, p in model.named_parameters() if p.requires_grad} == set(dict(grouped))
    return dict(grouped)


def test_layer_lr_decay_slows_each_block_below_layer4():
    rates = learning_rates(TrainLayers.ALL, layer_lr_decay=0.5)

    expected = {
        "fc.weight": 1e-3,
        "fc.bias": 1e-3,
        "layer4.2.conv3.weight": 1e-4,
        "layer3.0.downsample.1.bias": 5e-5,
        "layer2.1.bn2.weight": 2.5e-5,
        "layer1.0.conv1.weight": 1.25e-5,
        "conv1.weight": 6.25e-6,
        "bn1.bias": 6.25e-6,
    }
    assert {name: rates[name] for name in expected} == pytest.approx(expected)


def test_without_decay_the_whole_backbone_shares_one_rate():
    rates = learning_rates(TrainLayers.ALL)

    assert {rate for name, rate in rates.items() if not name.startswith("fc.")} == {1e-3 * 0.1}


def test_frozen_blocks_get_no_group():
    rates = learning_rates(TrainLayers.LAYER3, layer_lr_decay=0.5)

    assert {name.split(".")[0] for name in rates} == {"fc", "layer4", "layer3"}
    assert rates["layer3.5.conv2.weight"] == pytest.approx(5e-5)
