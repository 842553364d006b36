"""``covidct predict``: run a model directory on image files and folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from covidct.cli.console import console, err_console, print_failures, progress_callback, reports_errors
from covidct.cli.options import DeviceOpt, ModelDirArg
from covidct.errors import OptionError
from covidct.infer.predictor import PredictionRun, load_model
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.device import Device


@reports_errors
def predict(
    model_dir: ModelDirArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the results to FILE.csv or FILE.json instead of a table.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: DeviceOpt = Device.AUTO,
) -> None:
    """Predict COVID-19 probability for each image; exits 1 if any input failed (all others are still predicted)."""
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise OptionError(f"--out must end in .csv or .json; got '{out.name}'")
    predictor = load_model(model_dir, device=device, batch_size=batch_size)
    with progress_callback("predicting") as progress:
        run = predictor.predict(inputs, progress=progress)
    if out is None:
        print_predictions(run, predictor.card.classes)
    else:
        write_predictions(run, out, predictor.card.classes)
        console.print(f"{len(run.predictions)} prediction(s) written to {out}")
    for skipped in run.skipped:
        err_console.print(f"skipped {skipped.path}: {skipped.reason}", highlight=False)
    print_failures(run.failures)
    if run.failures:
        raise typer.Exit(1)


def print_predictions(run: PredictionRun, classes: tuple[str, ...]) -> None:
    """A table: path, prob_covid, label, per-class probabilities."""
    table = Table(caption=RESEARCH_USE_STATEMENT)
    for column in ("path", "prob_covid", "label", *(f"prob_{name}" for name in classes)):
        table.add_column(column, overflow="fold")
    for p in run.predictions:
        table.add_row(p.path, f"{p.prob_covid:.4f}", p.label, *(f"{p.probabilities[name]:.4f}" for name in classes))
    console.print(table)


def write_predictions(run: PredictionRun, out: Path, classes: tuple[str, ...]) -> None:
    """One row per image (CSV) or one object per image plus failures (JSON)."""
    rows = [{"path": p.path, "prob_covid": p.prob_covid, "label": p.label, **{f"prob_{n}": p.probabilities[n] for n in classes}} for p in run.predictions]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        failures = [{"path": f.path, "reason": f.reason} for f in run.failures]
        out.write_text(json.dumps({"notice": RESEARCH_USE_STATEMENT, "predictions": rows, "failures": failures}, indent=2), encoding="utf-8")
        return
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "prob_covid", "label", *(f"prob_{n}" for n in classes)])
        writer.writeheader()
        writer.writerows(rows)
