"""``covidct train``: fine-tune the ImageNet ResNet-50 on a dataset and write a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from covidct.cli.audit import print_findings
from covidct.cli.console import (
    Lines,
    console,
    err_console,
    new_progress,
    print_failures,
    progress_callback,
    reports_errors,
)
from covidct.cli.options import (
    CircularFieldOpt,
    CropFieldOpt,
    DataArg,
    DeviceOpt,
    FillPaddingOpt,
    GroupCol,
    LabelCol,
    MaxMinutesOpt,
    OverwriteOpt,
    PathCol,
    PositiveClass,
    RemoveAnnotationsOpt,
    ResumeOpt,
    SplitCol,
    StandardiseIntensityOpt,
    TrainWindowOpt,
    load_dataset,
)
from covidct.errors import OptionError
from covidct.model.device import Device
from covidct.model.train_layers import TrainLayers
from covidct.preprocess.window import LUNG_WINDOW
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import Augmentation, Mode, TrainConfig

if TYPE_CHECKING:
    from covidct.data.audit import AuditResult
    from covidct.train.trainer import TrainResult

WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        help="auto | torchvision | keras-npm, or a local ResNet-50 state dict (.safetensors or torch file).",
    ),
]


@reports_errors
def train(
    data: DataArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Model directory to write (model.safetensors, model.json, train_log.csv)."
        ),
    ],
    mode: Annotated[
        Mode, typer.Option(help="finetune (default, recommended) or linear (frozen backbone).")
    ] = Mode.FINETUNE,
    train_layers: Annotated[
        TrainLayers, typer.Option("--train-layers", help="finetune depth: layer4, layer3 or all (default).")
    ] = TrainLayers.ALL,
    frozen_views: Annotated[
        int,
        typer.Option(
            "--frozen-views",
            help=(
                "With --train-layers layer4/layer3: run the frozen layers once on this "
                "many augmented views per slice and reuse them (faster epochs; the views "
                "repeat after that many epochs). 0: fresh augmentation every epoch."
            ),
        ),
    ] = 0,
    epochs: Annotated[
        int | None, typer.Option(help="Maximum epochs (default 28 for finetune, 100 for linear).")
    ] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size")] = TrainConfig.batch_size,
    lr: Annotated[
        float,
        typer.Option(help="Peak learning rate of the head; the backbone gets lr x --backbone-lr-factor."),
    ] = TrainConfig.lr,
    backbone_lr_factor: Annotated[
        float, typer.Option("--backbone-lr-factor")
    ] = TrainConfig.backbone_lr_factor,
    layer_lr_decay: Annotated[
        float,
        typer.Option(
            "--layer-lr-decay",
            help="Each backbone block below layer4 learns at this fraction of the rate of the block above "
            "it (1: off, e.g. 0.5).",
        ),
    ] = TrainConfig.layer_lr_decay,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help="AdamW's decoupled weight decay (0: off, e.g. 0.05).")
    ] = TrainConfig.weight_decay,
    warmup_epochs: Annotated[
        float,
        typer.Option(
            "--warmup-epochs",
            help="Raise the learning rate linearly over this many epochs before the cosine decay (0: off).",
        ),
    ] = TrainConfig.warmup_epochs,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better validation ROC-AUC.")
    ] = TrainConfig.patience,
    ema_epochs: Annotated[
        float | None,
        typer.Option(
            "--ema-epochs",
            help=(
                "Validate and keep an exponential moving average of the "
                "weights over about this many epochs (0 or unset: off, e.g. 1)."
            ),
        ),
    ] = TrainConfig.ema_epochs,
    label_smoothing: Annotated[
        float,
        typer.Option(
            "--label-smoothing", help="Train against labels smoothed by this much (0: off, e.g. 0.1)."
        ),
    ] = TrainConfig.label_smoothing,
    mixup_alpha: Annotated[
        float,
        typer.Option(
            "--mixup-alpha",
            help="Train on blends of two slices and their labels, blend ~ Beta(a, a) for this a "
            "(0: off, e.g. 0.2).",
        ),
    ] = TrainConfig.mixup_alpha,
    max_minutes: MaxMinutesOpt = None,
    image_size: Annotated[int, typer.Option("--image-size")] = TrainConfig.image_size,
    crop_field: CropFieldOpt = TrainConfig.crop_field,
    remove_annotations: RemoveAnnotationsOpt = TrainConfig.remove_annotations,
    standardise_intensity: StandardiseIntensityOpt = TrainConfig.standardise_intensity,
    fill_padding: FillPaddingOpt = TrainConfig.fill_padding,
    circular_field: CircularFieldOpt = TrainConfig.circular_field,
    vary_export: Annotated[
        bool,
        typer.Option(
            "--vary-export/--no-vary-export",
            help="Augment over how slices were exported: window width and level, "
            "circular field of view with gray or black padding.",
        ),
    ] = TrainConfig.vary_export,
    narrow_windows: Annotated[
        bool,
        typer.Option(
            "--narrow-windows/--no-narrow-windows",
            help="Augment over narrower windows (what they clip): with --standardise-intensity, "
            "the part of another site's export the standardisation cannot undo.",
        ),
    ] = TrainConfig.narrow_windows,
    augmentation: Annotated[
        Augmentation,
        typer.Option(
            help="light (default): the UCSD baseline's random resized crop and flip. "
            "full: crop, flip, rotation, gray levels, resolution, blur, noise.",
        ),
    ] = TrainConfig.augmentation,
    window: TrainWindowOpt = str(LUNG_WINDOW),
    seed: int = 0,
    weights: WeightsOpt = "auto",
    backbone: Annotated[
        Path | None,
        typer.Option(
            "--backbone",
            help="Start from a backbone 'covidct pretrain' wrote (DIR with backbone.safetensors) instead "
            "of ImageNet; refused if it pre-trained on any file of this test split. Excludes --weights.",
        ),
    ] = None,
    device: DeviceOpt = Device.AUTO,
    target_sensitivity: Annotated[
        float | None,
        typer.Option(
            "--target-sensitivity",
            help="Choose the threshold for this validation sensitivity instead of Youden's J.",
        ),
    ] = None,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta/--no-tta",
            help=(
                "Average each slice with its mirror image at inference "
                "(twice the time; no validation gain measured here)."
            ),
        ),
    ] = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    path_col: PathCol = "path",
    label_col: LabelCol = "label",
    group_col: GroupCol = None,
    split_col: SplitCol = None,
    positive_class: PositiveClass = "COVID",
) -> None:
    """Fine-tune an ImageNet ResNet-50 on DATA; threshold and calibration are chosen on validation data."""
    config = TrainConfig(
        mode=mode,
        train_layers=train_layers,
        frozen_views=frozen_views,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        backbone_lr_factor=backbone_lr_factor,
        layer_lr_decay=layer_lr_decay,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        patience=patience,
        ema_epochs=ema_epochs or None,
        label_smoothing=label_smoothing,
        mixup_alpha=mixup_alpha,
        max_minutes=max_minutes,
        image_size=image_size,
        crop_field=crop_field,
        remove_annotations=remove_annotations,
        standardise_intensity=standardise_intensity,
        fill_padding=fill_padding,
        circular_field=circular_field,
        vary_export=vary_export,
        narrow_windows=narrow_windows,
        augmentation=augmentation,
        hu_window=window,
        seed=seed,
        device=device,
        target_sensitivity=target_sensitivity,
        tta_hflip=tta,
        backbone=backbone,
    )
    manifest = load_dataset(
        data,
        path_col=path_col,
        label_col=label_col,
        group_col=group_col,
        split_col=split_col,
        positive_class=positive_class,
    )
    result = run_training(manifest, out, config, weights=weights, resume=resume, overwrite=overwrite)
    if result is not None:
        print_training_summary(result)


def run_training(
    manifest, out: Path, config: TrainConfig, *, weights: str, resume: bool, overwrite: bool = False
) -> TrainResult | None:
    """Resolve the start weights and fit, drawing progress bars (shared by ``train`` and ``demo``).

    With ``config.backbone`` the start weights are that backbone's (``fit`` reads it), and ``weights``
    must be left at ``auto``. Under torchrun only rank 0 draws anything; the other ranks train silently
    and get None.

    Raises:
        OptionError: both a backbone and a ``weights`` other than ``auto``.
    """
    from covidct.model.pretrained import resolve_pretrained
    from covidct.train.distributed import is_main_process
    from covidct.train.trainer import fit

    if config.backbone is not None and weights != "auto":
        raise OptionError(
            f"--backbone and --weights {weights} both name start weights; the backbone's own start weights "
            "are in its backbone.json: drop --weights (or --backbone)"
        )
    if config.backbone is not None:
        pretrained = None
    elif not is_main_process():
        pretrained = resolve_pretrained(weights)
    else:
        with progress_callback("ImageNet weights") as progress:
            pretrained = resolve_pretrained(weights, progress=progress)
    if not is_main_process():
        return fit(manifest, out, config, pretrained=pretrained, resume=resume, overwrite=overwrite)
    with new_progress() as bars:
        callbacks = RichTrainCallbacks(bars)
        return fit(
            manifest,
            out,
            config,
            pretrained=pretrained,
            resume=resume,
            callbacks=callbacks,
            overwrite=overwrite,
        )


def print_training_summary(result: TrainResult) -> None:
    """Where the model is, its validation figures and what could not be used."""
    card = result.card
    metrics = card.validation_metrics
    print_failures(result.failures, title="Training images that could not be used")
    console.print(
        f"Model written to [bold]{result.model_dir}[/] (best epoch {card.training['best_epoch'] + 1}, "
        f"validation ROC-AUC {metrics['auc']:.3f}, threshold "
        f"{card.decision.threshold:.3f} by {card.decision.threshold_rule}, "
        f"temperature {card.decision.temperature:.2f}, class bias "
        f"{', '.join(f'{b:+.2f}' for b in card.decision.class_bias)})"
    )


class RichTrainCallbacks(TrainCallbacks):
    """Draws decoding, epoch and step bars on one progress display (plain lines in a log)."""

    def __init__(self, bars) -> None:
        self.bars = bars
        self.epoch_task = None
        self.step_task = None

    def on_stage(self, message: str) -> None:
        err_console.print(message)

    def on_audit(self, audit: AuditResult) -> None:
        if audit.warnings:
            print_findings(audit, warnings_only=True)
            err_console.print(
                "Training goes on; run 'covidct audit DATA --out DIR' for the full audit report."
            )

    def decode_progress(self, description: str):
        task = self.bars.add_task(description, total=None, status="")
        return lambda done, total: self.bars.update(task, completed=done, total=total)

    def on_step(self, step: int, steps: int, loss: float) -> None:
        if self.epoch_task is None:
            self.epoch_task = self.bars.add_task("epochs", total=None, status="", lines=Lines.EACH)
            self.step_task = self.bars.add_task("  steps", total=steps, status="", lines=Lines.TIMED)
        self.bars.update(self.step_task, completed=step, total=steps, status=f"loss {loss:.3f}")

    def on_epoch_end(self, record: dict, epochs: int) -> None:
        status = (
            f"epoch {record['epoch'] + 1}: loss {record['train_loss']:.3f}, val "
            f"loss {record['val_loss']:.3f}, val AUC {record['val_auc']:.3f}"
        )
        self.bars.update(self.epoch_task, completed=record["epoch"] + 1, total=epochs, status=status)
