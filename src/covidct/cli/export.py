"""``covidct export``: the model as ONNX (fp32, or int8 calibrated on training slices) for
``predict --engine onnx``."""

from __future__ import annotations

from contextlib import nullcontext
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from covidct.cli.console import console, err_console, progress_callback, reports_errors
from covidct.cli.options import (
    GroupCol,
    LabelCol,
    ModelDirArg,
    PathCol,
    SplitCol,
    load_dataset,
)
from covidct.export.calibration_slices import DEFAULT_CALIBRATION_SLICES


class ExportFormat(StrEnum):
    ONNX = "onnx"


@reports_errors
def export(
    model_dir: ModelDirArg,
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="The export format.")
    ] = ExportFormat.ONNX,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Quantize to int8 (static, QDQ, per-channel weights), calibrated on training slices.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help=(
                "FILE.onnx to write (default: MODEL_DIR/model.onnx, or model.int8.onnx "
                "with --int8: the files that predict --engine onnx / onnx-int8 read)."
            ),
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help=(
                "Data whose train split calibrates --int8, a folder or "
                "CSV (default: the training data recorded in model.json)."
            ),
        ),
    ] = None,
    calibration_slices: Annotated[
        int,
        typer.Option(
            "--calibration-slices",
            help=(
                "How many train-split slices calibrate --int8 (the "
                "calibrator holds about 120 MB per 224 px slice)."
            ),
        ),
    ] = DEFAULT_CALIBRATION_SLICES,
    path_col: PathCol = "path",
    label_col: LabelCol = "label",
    group_col: GroupCol = None,
    split_col: SplitCol = None,
) -> None:
    """Export MODEL_DIR for onnxruntime; the file's sha256 and settings go to FILE.onnx.json
    (model.json is not changed)."""
    from covidct.export.calibration import default_calibration_data
    from covidct.export.onnx import export_onnx
    from covidct.model.card import read_card

    manifest = None
    if int8:
        card = read_card(model_dir)
        data = calibration or default_calibration_data(card, model_dir)
        manifest = load_dataset(
            data,
            path_col=path_col,
            label_col=label_col,
            group_col=group_col,
            split_col=split_col,
            positive_class=card.positive_class,
        )
    with progress_callback("decoding calibration slices") if int8 else nullcontext() as progress:
        result = export_onnx(
            model_dir,
            int8=int8,
            out=out,
            calibration=manifest,
            calibration_slices=calibration_slices,
            progress=progress,
            on_stage=lambda message: err_console.print(message, highlight=False),
        )
    agreement = result.settings["agreement_with_torch"]
    console.print(
        f"{result.settings['precision']} ONNX model written to "
        f"{result.path} ({result.settings['size_bytes'] / 2**20:.1f} MiB)"
    )
    console.print(
        f"vs torch fp32 on {agreement['n_slices']} {agreement['inputs']}: "
        f"max |logit diff| {agreement['max_abs_logit_diff']:.2g}, "
        f"max |prob_covid diff| {agreement['max_abs_prob_covid_diff']:.2g}"
    )
    routing = (result.settings["quantization"] or {}).get("amx_routing") or {}
    if routing.get("convolutions_routed"):
        console.print(
            f"{routing['convolutions_routed']} small convolutions run on this CPU's AMX unit (same outputs; "
            "on a CPU without AMX-INT8 this file runs slower: export there)"
        )
    if "ood_flag_agreement" in agreement:
        console.print(
            f"out-of-distribution guard: same decision on {agreement['ood_flag_agreement']:.0%} "
            f"of them, max relative score diff {agreement['max_rel_ood_score_diff']:.2g}"
        )
    console.print(f"sha256 and settings: {result.settings_path}")
