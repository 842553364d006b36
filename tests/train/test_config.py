"""TrainConfig: defaults are the recommended recipe; every invalid option has its own message."""

from __future__ import annotations

import pytest

from covidct.errors import OptionError
from covidct.model.device import Device
from covidct.model.network import TrainLayers
from covidct.train.config import Augmentation, Mode, TrainConfig


def test_defaults():
    config = TrainConfig()

    assert (config.mode, config.train_layers, config.device) == (Mode.FINETUNE, TrainLayers.ALL, Device.AUTO)
    assert (config.image_size, config.batch_size, config.seed, config.tta_hflip) == (224, 10, 0, False)
    # the UCSD baseline's optimiser: Adam at one rate of 1e-4, nothing decayed, warmed up or averaged
    optimiser = (config.lr, config.backbone_lr_factor, config.weight_decay, config.warmup_epochs)
    assert optimiser == (1e-4, 1.0, 0.0, 0.0) and config.ema_epochs is None
    assert config.augmentation is Augmentation.LIGHT and config.narrow_windows and not config.vary_export
    site_steps = config.preprocessing
    assert site_steps.standardise_intensity and site_steps.fill_padding and site_steps.circular_field


@pytest.mark.parametrize(
    ("options", "epochs"),
    [({}, 28), ({"mode": "linear"}, 100), ({"epochs": 3}, 3), ({"mode": "linear", "epochs": 2}, 2)],
    ids=["finetune-default", "linear-default", "finetune-given", "linear-given"],
)
def test_resolved_epochs(options, epochs):
    assert TrainConfig(**options).resolved_epochs == epochs


def test_strings_become_enums():
    config = TrainConfig(mode="linear", train_layers="all", device="cpu")

    assert (config.mode, config.train_layers, config.device) == (Mode.LINEAR, TrainLayers.ALL, Device.CPU)


def test_to_dict_is_plain_values():
    values = TrainConfig(mode="linear", target_sensitivity=0.9).to_dict()

    assert values["mode"] == "linear" and type(values["mode"]) is str
    assert values["train_layers"] == "all" and type(values["train_layers"]) is str
    assert values["target_sensitivity"] == 0.9
    assert sorted(values) == sorted(TrainConfig.__dataclass_fields__)


# (id, options, message)
INVALID = [
    ("mode", {"mode": "transfer"}, "mode must be one of linear, finetune; got 'transfer'"),
    (
        "train-layers",
        {"train_layers": "layer2"},
        "train_layers must be one of head, layer4, layer3, all; got 'layer2'",
    ),
    ("device", {"device": "tpu"}, "device must be one of auto, cpu, cuda; got 'tpu'"),
    ("augmentation", {"augmentation": "heavy"}, "augmentation must be one of full, light; got 'heavy'"),
    ("epochs-zero", {"epochs": 0}, "epochs must be at least 1; got 0"),
    ("batch-size-one", {"batch_size": 1}, "batch_size must be at least 2; got 1"),
    ("lr-zero", {"lr": 0.0}, "lr must be positive; got 0.0"),
    ("lr-negative", {"lr": -1e-3}, "lr must be positive; got -0.001"),
    (
        "backbone-lr-factor-zero",
        {"backbone_lr_factor": 0.0},
        r"backbone_lr_factor must be in \(0, 1\]; got 0.0",
    ),
    (
        "backbone-lr-factor-above-one",
        {"backbone_lr_factor": 1.5},
        r"backbone_lr_factor must be in \(0, 1\]; got 1.5",
    ),
    (
        "layer-lr-decay-zero",
        {"layer_lr_decay": 0.0},
        r"layer_lr_decay must be in \(0, 1\] \(1: off\); got 0.0",
    ),
    (
        "layer-lr-decay-above-one",
        {"layer_lr_decay": 1.2},
        r"layer_lr_decay must be in \(0, 1\] \(1: off\); got 1.2",
    ),
    ("weight-decay-negative", {"weight_decay": -0.1}, "weight_decay must be >= 0; got -0.1"),
    ("warmup-negative", {"warmup_epochs": -1.0}, r"warmup_epochs must be >= 0 \(0: off\); got -1.0"),
    ("patience-zero", {"patience": 0}, "patience must be at least 1; got 0"),
    ("label-smoothing-half", {"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\); got 0.5"),
    (
        "label-smoothing-negative",
        {"label_smoothing": -0.1},
        r"label_smoothing must be in \[0, 0.5\); got -0.1",
    ),
    ("mixup-negative", {"mixup_alpha": -0.2}, r"mixup_alpha must be >= 0 \(0: off\); got -0.2"),
    ("image-size-small", {"image_size": 16}, "image_size must be between 32 and 1024; got 16"),
    ("image-size-large", {"image_size": 2048}, "image_size must be between 32 and 1024; got 2048"),
    (
        "target-sensitivity-one",
        {"target_sensitivity": 1.0},
        r"target_sensitivity must be in \(0, 1\); got 1.0",
    ),
    (
        "target-sensitivity-zero",
        {"target_sensitivity": 0.0},
        r"target_sensitivity must be in \(0, 1\); got 0.0",
    ),
    ("val-fraction", {"val_fraction": 0.5}, r"split fractions must be in \(0, 0.5\); got \(0.5, 0.15\)"),
    ("test-fraction", {"test_fraction": 0.0}, r"split fractions must be in \(0, 0.5\); got \(0.15, 0.0\)"),
]


@pytest.mark.parametrize(
    ("options", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_options_raise_option_error(options, message):
    with pytest.raises(OptionError, match=f"^{message}$"):
        TrainConfig(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"image_size": 32},
        {"image_size": 1024},
        {"backbone_lr_factor": 1.0},
        {"weight_decay": 0.0},
        {"batch_size": 2},
        {"target_sensitivity": 0.99},
        {"label_smoothing": 0.0, "mixup_alpha": 0.0},
    ],
    ids=[
        "image-size-32",
        "image-size-1024",
        "backbone-lr-factor-1",
        "weight-decay-0",
        "batch-size-2",
        "target-sensitivity-0.99",
        "regularisers-off",
    ],
)
def test_boundary_values_are_accepted(options):
    TrainConfig(**options)
