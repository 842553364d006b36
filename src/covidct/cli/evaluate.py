"""``covidct evaluate``: slice- and patient-level metrics with bootstrap CIs, figures and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from covidct.cli.console import (
    console,
    print_failures,
    progress_callback,
    reports_errors,
)
from covidct.cli.options import (
    DataArg,
    DeviceOpt,
    EngineOpt,
    GroupCol,
    LabelCol,
    ModelDirArg,
    PathCol,
    PositiveClass,
    SplitCol,
    load_dataset,
)
from covidct.infer.engine_kind import Engine
from covidct.model.decision import Aggregate
from covidct.model.device import Device

if TYPE_CHECKING:
    from covidct.evaluate.run import EvaluationRun


@reports_errors
def evaluate(
    model_dir: ModelDirArg,
    data: DataArg,
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for metrics.json, the figures, predictions.csv and report.html."),
    ],
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "test",
    aggregate: Annotated[
        Aggregate | None,
        typer.Option(
            help=(
                "Patient probability from its slices: mean, max or topk (mean "
                "of the top 25%) (default: the model card's study rule)."
            )
        ),
    ] = None,
    n_resamples: Annotated[
        int, typer.Option("--n-resamples", help="Bootstrap resamples for the 95% CIs.")
    ] = 1000,
    device: DeviceOpt = Device.AUTO,
    engine: EngineOpt = Engine.TORCH,
    path_col: PathCol = "path",
    label_col: LabelCol = "label",
    group_col: GroupCol = None,
    split_col: SplitCol = None,
    positive_class: PositiveClass = "COVID",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out that is not a covidct "
            "evaluation (files of the names covidct writes are "
            "replaced; others are left alone).",
        ),
    ] = False,
) -> None:
    """Evaluate MODEL_DIR on a split of DATA (the test split by default; never used in training).

    --engine onnx or onnx-int8 scores with the export, as 'covidct predict --engine' does, so the
    metrics are those of the model you deploy.
    """
    from covidct.evaluate.run import evaluate_model

    manifest = load_dataset(
        data,
        path_col=path_col,
        label_col=label_col,
        group_col=group_col,
        split_col=split_col,
        positive_class=positive_class,
    )
    with progress_callback(f"scoring the {split} split") as progress:
        run = evaluate_model(
            model_dir,
            manifest,
            out,
            split=split,
            aggregate=aggregate,
            device=device,
            engine=engine,
            n_resamples=n_resamples,
            progress=progress,
            overwrite=overwrite,
        )
    print_evaluation(run)


def print_evaluation(run: EvaluationRun) -> None:
    """A table of the metrics with their CIs, the failures, and where the report is."""
    from covidct.evaluate.metrics import METRIC_NAMES

    levels = {"slices": run.result.slice_level}
    if run.result.patient_level is not None:
        levels["patients"] = run.result.patient_level
    table = Table(title=f"threshold {run.result.threshold:.3f}")
    table.add_column("metric")
    for name, level in levels.items():
        table.add_column(f"{name} (n={level.n})")
    for metric in METRIC_NAMES:
        table.add_row(metric, *(_value_with_ci(level.to_json_dict()[metric]) for level in levels.values()))
    console.print(table)
    if run.site_shift is not None and run.site_shift.is_shifted:
        console.print(f"[bold yellow]{escape(run.site_shift.note())}[/]", highlight=False)
    print_failures(run.failures, title="Images that could not be scored")
    console.print(f"Report: [bold]{run.report_path}[/]")


def _value_with_ci(entry: dict) -> str:
    if entry["value"] is None:
        return "undefined"
    low, high = entry["ci95"]
    interval = "" if low is None else f" [{low:.3f}, {high:.3f}]"
    return f"{entry['value']:.3f}{interval}"
