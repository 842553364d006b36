"""Option types shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from covidct.infer.engine_kind import Engine
from covidct.model.device import Device

if TYPE_CHECKING:
    from covidct.data.manifest import Manifest

DataArg = Annotated[
    Path,
    typer.Argument(
        help="A folder with one subfolder per class, or a CSV manifest (path, label[, patient_id, split])."
    ),
]
PathCol = Annotated[
    str, typer.Option("--path-col", help="CSV column with image paths (relative to the CSV).")
]
LabelCol = Annotated[str, typer.Option("--label-col", help="CSV column with class names.")]
GroupCol = Annotated[
    str | None,
    typer.Option(
        "--group-col",
        help=(
            "CSV column with patient (group) ids; splits never "
            "share a patient. [default: patient_id, if present]"
        ),
    ),
]
SplitCol = Annotated[
    str | None,
    typer.Option(
        "--split-col",
        help=(
            "CSV column with train/val/test; without one covidct "
            "splits by patient. [default: split, if present]"
        ),
    ),
]
PositiveClass = Annotated[
    str, typer.Option("--positive-class", help="The class whose probability is reported as prob_covid.")
]
DeviceOpt = Annotated[Device, typer.Option("--device", help="auto picks CUDA when present, else the CPU.")]
EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="torch, or onnxruntime on the export that 'covidct export' wrote: "
        "onnx (model.onnx) or onnx-int8 (model.int8.onnx).",
    ),
]
ModelDirArg = Annotated[Path, typer.Argument(help="A model directory written by 'covidct train'.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run in --out with the same options.")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Write into a non-empty --out that is not a run of this command (files of the names covidct "
        "writes are replaced; others are left alone).",
    ),
]
CropFieldOpt = Annotated[
    bool,
    typer.Option(
        "--crop-field/--no-crop-field",
        help="Crop each slice to the body (largest bright components plus a margin) before resizing.",
    ),
]
RemoveAnnotationsOpt = Annotated[
    bool,
    typer.Option(
        "--remove-annotations/--no-remove-annotations",
        help="Blank bright marks outside the body (letters, arrows, the table).",
    ),
]
StandardiseIntensityOpt = Annotated[
    bool,
    typer.Option(
        "--standardise-intensity/--no-standardise-intensity",
        help="Map the body's 1st/99th intensity percentiles to black and white.",
    ),
]
FillPaddingOpt = Annotated[
    bool,
    typer.Option(
        "--fill-padding/--no-fill-padding",
        help="Set a flat gray frame outside a circular field of view to the air level first.",
    ),
]
CircularFieldOpt = Annotated[
    bool,
    typer.Option(
        "--circular-field/--no-circular-field",
        help="Crop to the body's box without a margin and set all outside its inscribed ellipse to air.",
    ),
]


def load_dataset(
    data: Path,
    *,
    path_col: str,
    label_col: str,
    group_col: str | None,
    split_col: str | None,
    positive_class: str,
) -> Manifest:
    """Read DATA with the column names the user gave."""
    from covidct.data.manifest import Columns, read_manifest  # numpy, pydicom: only when a command runs

    return read_manifest(
        data, columns=Columns(path_col, label_col, group_col, split_col), positive_class=positive_class
    )


MaxMinutesOpt = Annotated[
    float | None,
    typer.Option(
        "--max-minutes",
        help="Time budget: after each epoch, plan only the epochs that fit (the LR schedule follows).",
    ),
]
TrainWindowOpt = Annotated[
    str,
    typer.Option(
        "--window",
        help=(
            "HU window LEVEL,WIDTH for DICOM/NIfTI slices (PNG/JPEG "
            "are already windowed); stored in the model card."
        ),
    ),
]
