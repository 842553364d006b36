"""Training options, validated once here; the defaults are the recommended recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from covidct.errors import OptionError
from covidct.model.device import Device
from covidct.model.train_layers import TrainLayers
from covidct.preprocess.window import LUNG_WINDOW, HuWindow

if TYPE_CHECKING:
    from covidct.preprocess.transforms import Preprocessing


class Mode(StrEnum):
    """``linear``: frozen backbone, cached features, logistic head. ``finetune``:
    train the last stages too."""

    LINEAR = "linear"
    FINETUNE = "finetune"


class Augmentation(StrEnum):
    """``full``: geometry, gray levels, resolution, blur and noise (``preprocess.augment``). ``light``: the
    UCSD baseline's random resized crop and flip only."""

    FULL = "full"
    LIGHT = "light"


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a run; all of it goes into the model card."""

    mode: Mode = Mode.FINETUNE
    train_layers: TrainLayers = TrainLayers.ALL
    frozen_views: int = 0
    epochs: int | None = None
    # The default recipe since 2026-12-08: the UCSD baseline's optimiser and update count (Adam at one
    # learning rate of 1e-4, batch 10, no weight decay, warm-up or weight average; crop-and-flip augmentation)
    # with the site steps that hold its decisions on other sites' exports. Over 5 cross-validation folds of
    # each dataset it gained ROC-AUC (UCSD +0.021, SARS-CoV-2 +0.030) and kept more re-exported folds'
    # decisions within 0.10 (UCSD 23 vs 12, SARS-CoV-2 27 vs 19 of 30) than the recipe before it, the bench
    # recipe "full-augmentation" (BENCHMARKS.md, "Recipes by cross-validation").
    batch_size: int = 10
    lr: float = 1e-4
    backbone_lr_factor: float = 1.0
    # Layer-wise learning-rate decay: each block below layer4 learns at this fraction d of the rate of the
    # block above it (layer3 x d, layer2 x d^2, layer1 x d^3, the stem x d^4), so the generic early filters
    # move least. 1.0 is off: the whole backbone at lr x backbone_lr_factor.
    layer_lr_decay: float = 1.0
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    patience: int = 28
    ema_epochs: float | None = None
    max_minutes: float | None = None
    image_size: int = 224
    crop_field: bool = True
    remove_annotations: bool = True
    # The body's 1st/99th percentiles map to 0 and 1 before the network, at inference too: undoes a wider
    # window or a raised level (covidct.preprocess.site).
    standardise_intensity: bool = True
    # Padding outside a circular field of view filled to air, so the body crop finds the body when the padding
    # is gray (covidct.preprocess.site).
    fill_padding: bool = True
    # Every slice cut to the circle inscribed in the body's box (covidct.preprocess.site.keep_circular_field):
    # a gray-padded export and the shipped slice then differ by a few percent of zoom.
    circular_field: bool = True
    # Augment over how a slice was exported (window, circular field of view with gray or black padding):
    # covidct.preprocess.augment.RandomExport. Off by default: it cost in-domain ROC-AUC where the site steps
    # above hold the decisions (BENCHMARKS.md, "Robust to how a slice was exported").
    vary_export: bool = False
    # Augment over narrower windows (covidct.preprocess.augment.RandomNarrowWindow): with
    # standardise_intensity, the part of an export the standardisation cannot undo.
    narrow_windows: bool = True
    augmentation: Augmentation = Augmentation.LIGHT
    hu_window: HuWindow = LUNG_WINDOW  # a "LEVEL,WIDTH" string is parsed
    seed: int = 0
    device: Device = Device.AUTO
    target_sensitivity: float | None = None
    # Off by default: on validation the mirror-image average moved ROC-AUC by +0.0009 (UCSD) and 0.0000
    # (SARS-CoV-2 block 8) for twice the inference time (BENCHMARKS.md, "Inference speed").
    tta_hflip: bool = False
    # Regularisers of the training loss (covidct.train.loss), off by default: in UCSD cross-validation mixup
    # cost ROC-AUC at the default's budget and label smoothing moved it by less than the noise (BENCHMARKS.md,
    # "Loss regularisers"). Mixup blends what the trained layers see: slices, or with --mode linear and
    # --frozen-views the cached features.
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # mixup's Beta(alpha, alpha) blend; 0 is off
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # A folder 'covidct pretrain' wrote: fine-tuning starts from its backbone.safetensors instead of ImageNet
    # (covidct.model.backbone); kept as an absolute path.
    backbone: str | None = None

    def __post_init__(self) -> None:
        _parse_choices(
            self,
            (
                ("mode", Mode),
                ("train_layers", TrainLayers),
                ("device", Device),
                ("augmentation", Augmentation),
            ),
        )
        _parse_window(self)
        if self.backbone is not None:
            object.__setattr__(self, "backbone", str(Path(self.backbone).absolute()))
        _require(self.epochs is None or self.epochs >= 1, "epochs", "must be at least 1", self.epochs)
        _require(
            self.frozen_views >= 0, "frozen_views", "must be 0 (off) or a number of views", self.frozen_views
        )
        if self.frozen_views:
            has_frozen_trunk = self.mode is Mode.FINETUNE and self.train_layers in (
                TrainLayers.LAYER4,
                TrainLayers.LAYER3,
            )
            _require(
                has_frozen_trunk,
                "frozen_views",
                "caches frozen layers below trained ones: use it with train_layers layer4 or layer3",
                f"mode {self.mode} train_layers {self.train_layers}",
                also=("train_layers", "mode"),
            )
        _require(self.batch_size >= 2, "batch_size", "must be at least 2", self.batch_size)
        _require(self.lr > 0, "lr", "must be positive", self.lr)
        _require(
            0 < self.backbone_lr_factor <= 1,
            "backbone_lr_factor",
            "must be in (0, 1]",
            self.backbone_lr_factor,
        )
        _require(
            0 < self.layer_lr_decay <= 1, "layer_lr_decay", "must be in (0, 1] (1: off)", self.layer_lr_decay
        )
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        _require(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0 (0: off)", self.warmup_epochs)
        _require(
            self.ema_epochs is None or self.ema_epochs > 0, "ema_epochs", "must be positive", self.ema_epochs
        )
        _require(
            0 <= self.label_smoothing < 0.5,
            "label_smoothing",
            "must be in [0, 0.5)",
            self.label_smoothing,
        )
        _require(self.mixup_alpha >= 0, "mixup_alpha", "must be >= 0 (0: off)", self.mixup_alpha)
        _require(self.patience >= 1, "patience", "must be at least 1", self.patience)
        _require_budget_and_size(self)
        if self.target_sensitivity is not None:
            _require(
                0 < self.target_sensitivity < 1,
                "target_sensitivity",
                "must be in (0, 1)",
                self.target_sensitivity,
            )
        fractions = (self.val_fraction, self.test_fraction)
        if not all(0 < fraction < 0.5 for fraction in fractions):
            raise OptionError(
                f"split fractions must be in (0, 0.5); got {fractions}",
                parameters=("val_fraction", "test_fraction"),
            )

    @property
    def resolved_epochs(self) -> int:
        """Epochs to run: as given, else 28 for fine-tuning (the UCSD baseline's update count in 20 minutes on
        a 2-core bf16 CPU) and 100 for the (cheap) linear head."""
        if self.epochs is not None:
            return self.epochs
        return 100 if self.mode is Mode.LINEAR else 28

    @property
    def preprocessing(self) -> Preprocessing:
        """The slice pipeline this run trains with; the card stores it and inference
        rebuilds it from there."""
        return _preprocessing(self)

    def to_dict(self) -> dict:
        """Plain JSON values (enums and the window as text), as the model card and resume state keep them."""
        return _plain_values(self)


@dataclass(frozen=True)
class PretrainConfig:
    """Every hyperparameter of a ``covidct pretrain`` run (MoCo v2, see ``covidct.train.moco``); all of it
    goes into ``backbone.json``.

    The defaults follow MoCo v2 (Chen et al. 2020, arXiv:2003.04297), the method of the Self-Trans paper
    (He et al. 2020, the published UCSD-AI4H COVID-CT result): momentum 0.999, temperature 0.2, SGD at
    ``base_lr`` x batch / 256 with cosine decay, weight decay 1e-4; a queue of up to 4096 negatives, which is
    what lets the small batches a CPU affords still contrast each slice with thousands of others. By default
    (``queue_size`` None) the queue holds at most half the slices, in whole batches (``auto_queue_size``): a
    queue longer than the data would hold earlier keys of the very slice a query is matched with. The site
    steps and HU window are ``covidct train``'s defaults, so the backbone sees slices as fine-tuning will.
    """

    epochs: int = 100
    batch_size: int = 32
    image_size: int = 224
    queue_size: int | None = None
    momentum: float = 0.999
    temperature: float = 0.2
    base_lr: float = 0.03
    weight_decay: float = 1e-4
    # Batch norm over this many parts of each batch, the key encoder's on a shuffled order: one device's
    # stand-in for MoCo's shuffled BN, without which the BN statistics leak which key matches which query.
    bn_splits: int = 2
    max_minutes: float | None = None
    crop_field: bool = TrainConfig.crop_field
    remove_annotations: bool = TrainConfig.remove_annotations
    standardise_intensity: bool = TrainConfig.standardise_intensity
    fill_padding: bool = TrainConfig.fill_padding
    circular_field: bool = TrainConfig.circular_field
    hu_window: HuWindow = LUNG_WINDOW  # a "LEVEL,WIDTH" string is parsed
    seed: int = 0
    device: Device = Device.AUTO

    def __post_init__(self) -> None:
        _parse_choices(self, (("device", Device),))
        _parse_window(self)
        _require(self.epochs >= 1, "epochs", "must be at least 1", self.epochs)
        _require(self.batch_size >= 4, "batch_size", "must be at least 4", self.batch_size)
        _require(
            self.queue_size is None or self.queue_size >= 1,
            "queue_size",
            "must be at least 1",
            self.queue_size,
        )
        _require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        _require(self.temperature > 0, "temperature", "must be positive", self.temperature)
        _require(self.base_lr > 0, "base_lr", "must be positive", self.base_lr)
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        _require(
            1 <= self.bn_splits <= self.batch_size // 2,
            "bn_splits",
            "must be from 1 to half the batch size (two slices per batch-norm part at least)",
            self.bn_splits,
            also=("batch_size",),
        )
        _require_budget_and_size(self)

    @property
    def lr(self) -> float:
        """The peak learning rate: ``base_lr`` scaled linearly with the batch (Goyal et al. 2017)."""
        return self.base_lr * self.batch_size / 256

    @property
    def preprocessing(self) -> Preprocessing:
        """The slice pipeline the backbone learns on: ``covidct train``'s, with this run's options."""
        return _preprocessing(self)

    def to_dict(self) -> dict:
        """Plain JSON values, as ``backbone.json`` and the resume state keep them."""
        return _plain_values(self)


def _parse_choices(config: TrainConfig | PretrainConfig, fields: tuple[tuple[str, type], ...]) -> None:
    for name, kind in fields:
        value = getattr(config, name)
        try:
            object.__setattr__(config, name, kind(value))
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise OptionError(f"{name} must be one of {choices}; got '{value}'", parameters=(name,)) from None


def _parse_window(config: TrainConfig | PretrainConfig) -> None:
    if isinstance(config.hu_window, str):
        object.__setattr__(config, "hu_window", HuWindow.parse(config.hu_window))  # OptionError names window


def _require_budget_and_size(config: TrainConfig | PretrainConfig) -> None:
    budget = config.max_minutes
    _require(budget is None or budget > 0, "max_minutes", "must be positive", budget)
    _require(32 <= config.image_size <= 1024, "image_size", "must be between 32 and 1024", config.image_size)


def _preprocessing(config: TrainConfig | PretrainConfig) -> Preprocessing:
    from covidct.preprocess.transforms import Preprocessing  # loaded for training, not for --help

    return Preprocessing(
        image_size=config.image_size,
        crop_field=config.crop_field,
        remove_annotations=config.remove_annotations,
        standardise_intensity=config.standardise_intensity,
        fill_padding=config.fill_padding,
        circular_field=config.circular_field,
        hu_window=config.hu_window,
    )


def _plain_values(config: TrainConfig | PretrainConfig) -> dict:
    values = {**asdict(config), "hu_window": str(config.hu_window)}
    return {key: (str(value) if isinstance(value, StrEnum) else value) for key, value in values.items()}


def _require(
    condition: bool, parameter: str, requirement: str, value: object, *, also: tuple[str, ...] = ()
) -> None:
    """Raise "``parameter`` ``requirement``; got ``value``" unless ``condition`` (the CLI shows flags)."""
    if not condition:
        raise OptionError(f"{parameter} {requirement}; got {value}", parameters=(parameter, *also))


def auto_queue_size(n_slices: int, batch_size: int) -> int:
    """MoCo's queue for ``n_slices``: half of them in whole batches, from one batch up to 4096
    (e.g. 256 for UCSD-AI4H's 543 train+val slices in batches of 32)."""
    return batch_size * max(1, min(4096 // batch_size, n_slices // (2 * batch_size)))
