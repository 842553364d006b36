"""``covidct pretrain``: self-supervised pre-training (MoCo v2) of the ResNet-50 on unlabelled CT slices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from covidct.cli.console import console, new_progress, print_failures, progress_callback, reports_errors
from covidct.cli.options import (
    CircularFieldOpt,
    CropFieldOpt,
    DeviceOpt,
    FillPaddingOpt,
    MaxMinutesOpt,
    OverwriteOpt,
    PathCol,
    RemoveAnnotationsOpt,
    ResumeOpt,
    StandardiseIntensityOpt,
    TrainWindowOpt,
)
from covidct.cli.train import RichTrainCallbacks, WeightsOpt
from covidct.model.device import Device
from covidct.preprocess.window import LUNG_WINDOW
from covidct.train.config import PretrainConfig

if TYPE_CHECKING:
    from covidct.train.pretrain import PretrainResult

_DEFAULTS = PretrainConfig()


@reports_errors
def pretrain(
    data: Annotated[
        Path,
        typer.Argument(
            help="A folder of images (class subfolders or not) or a CSV manifest like 'covidct train' "
            "takes; labels are not read, and rows whose split is test are left out."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder to write backbone.safetensors and backbone.json into."),
    ],
    epochs: Annotated[int, typer.Option(help="Epochs over the slices (fewer with --max-minutes).")] = (
        _DEFAULTS.epochs
    ),
    batch_size: Annotated[int, typer.Option("--batch-size")] = _DEFAULTS.batch_size,
    image_size: Annotated[
        int, typer.Option("--image-size", help="Slice size; fine-tune at the same size.")
    ] = _DEFAULTS.image_size,
    queue_size: Annotated[
        int | None,
        typer.Option(
            "--queue-size",
            help="Negatives each slice is contrasted with (MoCo's queue). "
            "[default: half the slices in whole batches, at most 4096]",
        ),
    ] = None,
    max_minutes: MaxMinutesOpt = None,
    crop_field: CropFieldOpt = _DEFAULTS.crop_field,
    remove_annotations: RemoveAnnotationsOpt = _DEFAULTS.remove_annotations,
    standardise_intensity: StandardiseIntensityOpt = _DEFAULTS.standardise_intensity,
    fill_padding: FillPaddingOpt = _DEFAULTS.fill_padding,
    circular_field: CircularFieldOpt = _DEFAULTS.circular_field,
    window: TrainWindowOpt = str(LUNG_WINDOW),
    seed: int = 0,
    weights: WeightsOpt = "auto",
    device: DeviceOpt = Device.AUTO,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    path_col: PathCol = "path",
    split_col: Annotated[
        str | None,
        typer.Option(
            "--split-col",
            help="CSV column with train/val/test; its test rows are left out. [default: split, if present]",
        ),
    ] = None,
) -> None:
    """Pre-train the ResNet-50 on DATA's slices without labels (MoCo v2), for 'covidct train --backbone'.

    Starts from the ImageNet weights (--weights), prepares slices as 'covidct train' does, and never uses
    a test split. Ctrl-C leaves a state that --resume continues.
    """
    config = PretrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        image_size=image_size,
        queue_size=queue_size,
        max_minutes=max_minutes,
        crop_field=crop_field,
        remove_annotations=remove_annotations,
        standardise_intensity=standardise_intensity,
        fill_padding=fill_padding,
        circular_field=circular_field,
        hu_window=window,
        seed=seed,
        device=device,
    )
    from covidct.data.manifest import Columns, read_unlabelled  # numpy, torch: only when the command runs
    from covidct.model.pretrained import resolve_pretrained
    from covidct.train.pretrain import pretrain as run_pretraining

    inputs = read_unlabelled(data, columns=Columns(path=path_col, split=split_col))

    with progress_callback("ImageNet weights") as progress:
        pretrained = resolve_pretrained(weights, progress=progress)
    with new_progress() as bars:
        result = run_pretraining(
            inputs,
            out,
            config,
            pretrained=pretrained,
            resume=resume,
            callbacks=RichPretrainCallbacks(bars),
            overwrite=overwrite,
        )
    _print_summary(result)


def _print_summary(result: PretrainResult) -> None:
    card = result.card
    print_failures(result.failures, title="Images that could not be used")
    console.print(
        f"Backbone written to [bold]{result.out_dir}[/] ({card['method']}, {card['epochs_run']} epochs on "
        f"{card['n_slices']} slices of {len(card['input_sha256'])} files, final loss "
        f"{card['history'][-1]['loss']:.3f}); fine-tune with 'covidct train DATA --backbone {result.out_dir}'"
    )


class RichPretrainCallbacks(RichTrainCallbacks):
    """``covidct train``'s bars, with the contrastive loss in the epoch line."""

    def on_epoch_end(self, record: dict, epochs: int) -> None:
        status = f"epoch {record['epoch'] + 1}: loss {record['loss']:.3f}"
        self.bars.update(self.epoch_task, completed=record["epoch"] + 1, total=epochs, status=status)
