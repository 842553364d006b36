"""``covidct preprocess-preview``: before/after pictures of the slice pipeline on a sample of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from covidct.cli.console import (
    console,
    print_failures,
    progress_callback,
    reports_errors,
)
from covidct.cli.options import (
    CircularFieldOpt,
    CropFieldOpt,
    FillPaddingOpt,
    RemoveAnnotationsOpt,
    StandardiseIntensityOpt,
)
from covidct.train.config import TrainConfig


@reports_errors
def preprocess_preview(
    data: Annotated[
        Path,
        typer.Argument(
            help=(
                "A folder of CT slice images or DICOM/NIfTI volumes (searched "
                "recursively), one file, or a CSV manifest (path, label, ...)."
            )
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the before|after PNGs and index.html.")],
    n: Annotated[
        int,
        typer.Option(
            "--n", min=1, help="How many inputs to sample (a volume is shown by its middle lung slice)."
        ),
    ] = 16,
    image_size: Annotated[int, typer.Option("--image-size", min=32, max=1024)] = TrainConfig.image_size,
    crop_field: CropFieldOpt = TrainConfig.crop_field,
    remove_annotations: RemoveAnnotationsOpt = TrainConfig.remove_annotations,
    standardise_intensity: StandardiseIntensityOpt = TrainConfig.standardise_intensity,
    fill_padding: FillPaddingOpt = TrainConfig.fill_padding,
    circular_field: CircularFieldOpt = TrainConfig.circular_field,
    seed: int = 0,
) -> None:
    """Show what the network would see for a sample of DATA: each slice before (whole image)
    and after the site steps."""
    from covidct.data.preview import write_preview
    from covidct.preprocess.transforms import Preprocessing

    preprocessing = Preprocessing(
        image_size=image_size,
        crop_field=crop_field,
        remove_annotations=remove_annotations,
        standardise_intensity=standardise_intensity,
        fill_padding=fill_padding,
        circular_field=circular_field,
    )
    with progress_callback("preparing slices") as progress:
        preview = write_preview(data, out, preprocessing, n=n, seed=seed, progress=progress)
    print_failures(preview.failures, title="Files that could not be previewed")
    console.print(
        f"{len(preview.pairs)} before|after pairs: open [bold]{escape(str(preview.index_path))}[/]",
        highlight=False,
    )
