"""Training options, validated once here; the defaults are the recommended recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
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


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a run; all of it goes into the model card."""

    mode: Mode = Mode.FINETUNE
    train_layers: TrainLayers = TrainLayers.ALL
    frozen_views: int = 0
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_factor: float = 0.1
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    patience: int = 8
    ema_epochs: float | None = 1.0
    max_minutes: float | None = None
    image_size: int = 224
    crop_field: bool = True
    remove_annotations: bool = True
    # Off by default: on validation data it cost in-domain ROC-AUC (see BENCHMARKS.md,
    # "Cross-site generalisation").
    standardise_intensity: bool = False
    fill_padding: bool = False
    # Augment over how a slice was exported (window, circular field of view with gray or black padding):
    # covidct.preprocess.augment.RandomExport (BENCHMARKS.md, "Robust to how a slice was exported").
    vary_export: bool = False
    hu_window: HuWindow = LUNG_WINDOW  # a "LEVEL,WIDTH" string is parsed
    seed: int = 0
    device: Device = Device.AUTO
    target_sensitivity: float | None = None
    # Off by default: on validation the mirror-image average moved ROC-AUC by +0.0009 (UCSD) and 0.0000
    # (SARS-CoV-2 block 8) for twice the inference time (BENCHMARKS.md, "Inference speed").
    tta_hflip: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    def __post_init__(self) -> None:
        for name, kind in (("mode", Mode), ("train_layers", TrainLayers), ("device", Device)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError:
                choices = ", ".join(member.value for member in kind)
                raise OptionError(
                    f"{name} must be one of {choices}; got '{value}'", parameters=(name,)
                ) from None
        if isinstance(self.hu_window, str):
            object.__setattr__(
                self, "hu_window", HuWindow.parse(self.hu_window)
            )  # raises OptionError naming window
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
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        _require(
            self.ema_epochs is None or self.ema_epochs > 0, "ema_epochs", "must be positive", self.ema_epochs
        )
        _require(self.patience >= 1, "patience", "must be at least 1", self.patience)
        _require(
            self.max_minutes is None or self.max_minutes > 0,
            "max_minutes",
            "must be positive",
            self.max_minutes,
        )
        _require(32 <= self.image_size <= 1024, "image_size", "must be between 32 and 1024", self.image_size)
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
        """Epochs to run: as given, else 20 for fine-tuning and 100 for the (cheap) linear head."""
        if self.epochs is not None:
            return self.epochs
        return 100 if self.mode is Mode.LINEAR else 20

    @property
    def preprocessing(self) -> Preprocessing:
        """The slice pipeline this run trains with; the card stores it and inference
        rebuilds it from there."""
        from covidct.preprocess.transforms import Preprocessing  # loaded for training, not for --help

        return Preprocessing(
            image_size=self.image_size,
            crop_field=self.crop_field,
            remove_annotations=self.remove_annotations,
            standardise_intensity=self.standardise_intensity,
            fill_padding=self.fill_padding,
            hu_window=self.hu_window,
        )

    def to_dict(self) -> dict:
        """Plain JSON values (enums and the window as text), as the model card and resume state keep them."""
        values = {**asdict(self), "hu_window": str(self.hu_window)}
        return {key: (str(value) if isinstance(value, StrEnum) else value) for key, value in values.items()}


def _require(
    condition: bool, parameter: str, requirement: str, value: object, *, also: tuple[str, ...] = ()
) -> None:
    """Raise "``parameter`` ``requirement``; got ``value``" unless ``condition`` (the CLI shows flags)."""
    if not condition:
        raise OptionError(f"{parameter} {requirement}; got {value}", parameters=(parameter, *also))
