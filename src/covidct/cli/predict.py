"""``covidct predict``: run a model directory on image files and folders."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from covidct.cli.console import console, err_console, print_failures, progress_callback, reports_errors
from covidct.cli.options import DeviceOpt, ModelDirArg
from covidct.errors import OptionError
from covidct.infer.engines import Engine
from covidct.infer.gradcam import overlay_names, render_overlay
from covidct.infer.predictor import Explanation, Prediction, PredictionRun, load_model
from covidct.infer.result_files import PredictionFile, WrittenPredictions
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.device import Device


@reports_errors
def predict(
    model_dir: ModelDirArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the results to FILE.csv or FILE.json instead of a table.")] = None,
    cam: Annotated[Path | None, typer.Option("--cam", help="Also write a Grad-CAM overlay per image to DIR/<name>_cam.png (slower: one backward pass each).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: DeviceOpt = Device.AUTO,
    engine: Annotated[Engine, typer.Option("--engine", help="torch, or onnxruntime on the export that 'covidct export' wrote: onnx (model.onnx) or onnx-int8 (model.int8.onnx).")] = Engine.TORCH,
) -> None:
    """Predict COVID-19 probability for each image; exits 1 if any input failed (all others are still predicted).

    Images that do not look like the chest CT slices the model was trained on get the label not-ct
    and no probability.
    """
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise OptionError(f"--out must end in .csv or .json; got '{out.name}'")
    if cam is not None and cam.exists() and not cam.is_dir():
        raise OptionError(f"--cam must be a folder; '{cam}' is a file")
    predictor = load_model(model_dir, device=device, batch_size=batch_size, engine=engine)
    with progress_callback("explaining" if cam else "predicting") as progress:
        if cam is not None:
            explained = predictor.explain(inputs, progress=progress)
            run = PredictionRun(explained.predictions, explained.failures, explained.skipped)
        elif out is None:
            run = predictor.predict(inputs, progress=progress)
        else:  # streamed: each batch's rows are written as soon as it is done, so memory stays flat however many files
            run = write_predictions(predictor.iter_predict(inputs, progress=progress), out, predictor.card.classes)
    if out is None:
        print_predictions(run, predictor.card.classes)
    else:
        if cam is not None:
            run = write_predictions([run], out, predictor.card.classes)
        console.print(f"{run.n_predictions} prediction(s) written to {out}")
    if cam is not None:
        written = write_overlays(explained.explanations, cam)
        console.print(f"{len(written)} Grad-CAM overlay(s) written to {cam}")
    for skipped in run.skipped:
        err_console.print(f"skipped {skipped.path}: {skipped.reason}", highlight=False)
    print_failures(run.failures)
    if run.failures:
        raise typer.Exit(1)


def print_predictions(run: PredictionRun, classes: tuple[str, ...]) -> None:
    """A table: path, prob_covid (or why there is none), label, per-class probabilities, OOD score."""
    table = Table(caption=RESEARCH_USE_STATEMENT)
    for column in ("path", "prob_covid", "label", *(f"prob_{name}" for name in classes), "ood_score"):
        table.add_column(column, overflow="fold")
    for p in run.predictions:
        prob_covid = p.message if p.prob_covid is None else f"{p.prob_covid:.4f}"
        probabilities = (f"{p.probabilities[name]:.4f}" if name in p.probabilities else "-" for name in classes)
        table.add_row(p.path, prob_covid, p.label, *probabilities, "-" if p.ood_score is None else f"{p.ood_score:.1f}")
    console.print(table)


def write_predictions(runs: Iterable[PredictionRun], out: Path, classes: tuple[str, ...]) -> WrittenPredictions:
    """Write each run's rows as it comes: one row per image (CSV) or one object per image plus failures (JSON).

    A flagged image has no probabilities. Rows are not kept: the result holds their count, the failures and skipped files.
    """
    failures, skipped = [], []
    with PredictionFile(out, list(_row(Prediction("", None, "", {}), classes)), notice=RESEARCH_USE_STATEMENT) as file:
        for run in runs:
            file.write([_row(p, classes) for p in run.predictions], run.failures)
            failures += run.failures
            skipped += run.skipped
    return WrittenPredictions(file.n_rows, failures, skipped)


def _row(p: Prediction, classes: tuple[str, ...]) -> dict:
    return {
        "path": p.path, "prob_covid": p.prob_covid, "label": p.label, **{f"prob_{n}": p.probabilities.get(n) for n in classes},
        "in_distribution": p.in_distribution, "ood_score": p.ood_score, "message": p.message,
    }


def write_overlays(explanations: list[Explanation], cam_dir: Path) -> list[Path]:
    """Write each explanation's overlay as ``cam_dir/<stem>_cam.png`` (unique names); return the paths."""
    cam_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for explanation, name in zip(explanations, overlay_names([e.path for e in explanations]), strict=True):
        path = cam_dir / name
        render_overlay(explanation.slice, explanation.heatmap, overlay_caption(explanation.prediction)).save(path)
        paths.append(path)
    return paths


def overlay_caption(p: Prediction) -> str:
    """The line under an overlay: the label with its probability, or "not-ct" with the OOD score."""
    if p.prob_covid is None:
        return f"{p.label}: OOD score {p.ood_score:.1f}, no COVID probability"
    return f"{p.label}  P(COVID) = {p.prob_covid:.3f}"
