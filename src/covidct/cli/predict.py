"""``covidct predict``: run a model directory on image files, DICOM series, NIfTI volumes and folders of them."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from covidct.cli.console import (
    console,
    err_console,
    print_failures,
    progress_callback,
    reports_errors,
)
from covidct.cli.options import DeviceOpt, EngineOpt, ModelDirArg
from covidct.errors import CovidctWarning, OptionError
from covidct.infer.engines import Engine
from covidct.infer.overlay import overlay_caption, overlay_names, render_overlay
from covidct.infer.predictor import (
    Explanation,
    Prediction,
    PredictionRun,
    Predictor,
    load_model,
)
from covidct.infer.result_files import PredictionFile, WrittenPredictions
from covidct.infer.stream import default_decode_workers
from covidct.infer.study import SlicePrediction, StudyPrediction
from covidct.infer.study_plot import plot_study, study_file_names
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.io.budget import DEFAULT_REQUEST_VOXELS
from covidct.io.images import MAX_PIXELS
from covidct.model.device import Device, resolve_device
from covidct.preprocess.window import HuWindow

# Columns only studies and their slices fill; 2-D image rows leave them empty (kind "image").
_STUDY_COLUMNS = ("kind", "study_key", "series_key", "slice", "slice_index", "n_slices_total", "n_slices_used", "aggregate", "plot")


@reports_errors
def predict(
    model_dir: ModelDirArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files (PNG/JPEG: already windowed), DICOM files, NIfTI files, and folders (walked recursively; one result per DICOM series).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the results to FILE.csv or FILE.json instead of a table.")] = None,
    cam: Annotated[Path | None, typer.Option("--cam", help="Also write a Grad-CAM overlay per image, or per most suspicious slice of a study, to DIR (slower: one backward pass each).")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write each study's probability-along-the-slices PNG to DIR (default: FILE_plots/ beside --out FILE; none without --out).")] = None,
    per_slice: Annotated[bool, typer.Option("--per-slice", help="Also give one row per scored slice of each study (kind 'slice').")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Refuse an image (or a DICOM/NIfTI slice) whose header claims more pixels than this, before decoding it (decompression bombs).")] = MAX_PIXELS,
    max_voxels: Annotated[int, typer.Option(
        "--max-voxels",
        help="Refuse a DICOM series or NIfTI volume whose headers claim more voxels than this, before decoding it "
        "(its memory: 4 bytes a voxel).",
    )] = DEFAULT_REQUEST_VOXELS,
    window: Annotated[str | None, typer.Option("--window", help="HU window LEVEL,WIDTH for DICOM/NIfTI, e.g. -600,1500 (default: the model's, from model.json).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: DeviceOpt = Device.AUTO,
    engine: EngineOpt = Engine.TORCH,
    decode_workers: Annotated[
        int | None, typer.Option("--decode-workers", help="Processes that decode files (0: one thread beside the network). Default: half the cores (up to 8) when torch runs on a GPU; on the CPU (and for the onnx engines), none below 8 cores, else a quarter (up to 4).")
    ] = None,
) -> None:
    """Predict COVID-19 probability for each image and each study; exits 1 if any input failed (all others are still predicted).

    Images that do not look like the chest CT slices the model was trained on get the label not-ct
    and no probability. A study (DICOM series, NIfTI volume) is scored on its lung slices only and
    gets one probability by the model card's aggregation rule. Studies are named by file path and
    hashed keys, never by patient attributes.
    """
    for option, folder in (("--cam", cam), ("--plots", plots)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise OptionError(f"{option} must be a folder; '{folder}' is a file")
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise OptionError(f"--out must end in .csv or .json; got '{out.name}'")
    predictor = load_model(
        model_dir, device=device, batch_size=batch_size, engine=engine, window=None if window is None else HuWindow.parse(window), max_pixels=max_pixels,
        max_voxels=max_voxels,
        decode_workers=default_decode_workers(resolve_device(device if engine is Engine.TORCH else Device.CPU)) if decode_workers is None else decode_workers,
    )
    warn_if_window_differs(predictor)
    plots = plots if plots is not None or out is None else out.with_name(f"{out.stem}_plots")
    with progress_callback("explaining" if cam else "predicting") as progress:
        if cam is not None:
            explained = predictor.explain(inputs, progress=progress)
            run = PredictionRun(explained.predictions, explained.failures, explained.skipped, explained.studies)
        elif out is None:
            run = predictor.predict(inputs, progress=progress)
        else:  # streamed: each batch's rows are written as soon as it is done, so memory stays flat however many files
            run = write_predictions(predictor.iter_predict(inputs, progress=progress), out, predictor.card.classes, per_slice=per_slice, plots_dir=plots)
    if out is None:
        plotted = write_plots(run.studies, plots)
        print_predictions(run, predictor.card.classes, per_slice=per_slice, plots=plotted)
    else:
        if cam is not None:
            run = write_predictions([run], out, predictor.card.classes, per_slice=per_slice, plots_dir=plots)
        plotted = run.plots
        console.print(f"{run.n_predictions} prediction(s) written to {out}")
    if plotted:
        console.print(f"{len(plotted)} study plot(s) written to {plots}")
    if cam is not None:
        written = write_overlays(explained.explanations, cam) + write_study_overlays(explained.studies, cam)
        console.print(f"{len(written)} Grad-CAM overlay(s) written to {cam}")
    for skipped in run.skipped:
        err_console.print(f"skipped {skipped.path}: {skipped.reason}", highlight=False)
    print_failures(run.failures)
    if run.failures:
        raise typer.Exit(1)


def warn_if_window_differs(predictor: Predictor) -> None:
    """Warn when ``--window`` is not the window the model was trained with: its probabilities are then off-card."""
    trained = HuWindow.parse(predictor.card.preprocessing.hu_window)
    if predictor.window != trained:
        warnings.warn(
            f"--window {predictor.window} differs from the window the model was trained with ({trained}); "
            "its probabilities and threshold were calibrated for that one",
            CovidctWarning,
            stacklevel=2,
        )


def print_predictions(run: PredictionRun, classes: tuple[str, ...], *, per_slice: bool = False, plots: Sequence[Path] = ()) -> None:
    """Print a table of the images, one of the studies (if any), and with ``per_slice`` one of the studies' slices.

    ``plots`` holds each study's plot, in order (empty when none were written).
    """
    if run.predictions or not run.studies:
        console.print(_image_table(run.predictions, classes))
    if run.studies:
        console.print(_study_table(run.studies, [*plots] or [None] * len(run.studies)))
    if per_slice and run.studies:
        console.print(_slice_table(run.studies))


def _image_table(predictions: Sequence[Prediction], classes: tuple[str, ...]) -> Table:
    """Path, prob_covid (or why there is none), label, per-class probabilities and OOD score of each image."""
    table = Table(caption=RESEARCH_USE_STATEMENT)
    for column in ("path", "prob_covid", "label", *(f"prob_{name}" for name in classes), "ood_score"):
        table.add_column(column, overflow="fold")
    for p in predictions:
        prob_covid = p.message if p.prob_covid is None else f"{p.prob_covid:.4f}"
        probabilities = (f"{p.probabilities[name]:.4f}" if name in p.probabilities else "-" for name in classes)
        table.add_row(p.path, prob_covid, p.label, *probabilities, _score(p.ood_score))
    return table


def _study_table(studies: Sequence[StudyPrediction], plots: Sequence[Path | None]) -> Table:
    table = Table(title="Studies", caption=RESEARCH_USE_STATEMENT)
    for column in ("path", "study_key", "prob_covid", "label", "slices used / total", "aggregate", "plot"):
        table.add_column(column, overflow="fold")
    for study, plot in zip(studies, plots, strict=True):
        prob_covid = study.message if study.prob_covid is None else f"{study.prob_covid:.4f}"
        table.add_row(study.source, study.study_key, prob_covid, study.label, f"{study.n_slices_used} / {study.n_slices_total}", study.aggregate, str(plot or "-"))
    return table


def _slice_table(studies: Sequence[StudyPrediction]) -> Table:
    table = Table(title="Slices of the studies")
    for column in ("path", "slice", "slice_index", "prob_covid", "label", "ood_score"):
        table.add_column(column, overflow="fold")
    for study in studies:
        for item in study.slices:
            prob_covid = "-" if item.prob_covid is None else f"{item.prob_covid:.4f}"
            table.add_row(study.source, item.name, str(item.index), prob_covid, item.label, _score(item.ood_score))
    return table


def write_predictions(runs: Iterable[PredictionRun], out: Path, classes: tuple[str, ...], *, per_slice: bool = False, plots_dir: Path | None = None) -> WrittenPredictions:
    """Write each run's rows as it comes: one row per image and per study, with ``per_slice`` one per scored slice too.

    CSV gets one row each, JSON one object each plus the failures. ``kind`` tells the rows apart
    (image, study, slice); the per-class probabilities are for images only (a study has one
    aggregated ``prob_covid``). Each study's plot goes to ``plots_dir`` as the rows are written.
    Rows are not kept: the result holds their count, the failures, skipped files and plots.
    """
    failures, skipped, plots, n_predictions = [], [], [], 0
    with PredictionFile(out, prediction_columns(classes), notice=RESEARCH_USE_STATEMENT) as file:
        for run in runs:
            study_plots = write_plots(run.studies, plots_dir) or [None] * len(run.studies)
            rows = [_row(p, classes) for p in run.predictions]
            for study, plot in zip(run.studies, study_plots, strict=True):
                rows.append(_study_row(study, classes, plot))
                rows += [_slice_row(study, item, classes) for item in study.slices] if per_slice else []
            file.write(rows, run.failures)
            failures += run.failures
            skipped += run.skipped
            plots += [plot for plot in study_plots if plot is not None]
            n_predictions += len(run.predictions) + len(run.studies)
    return WrittenPredictions(n_predictions, failures, skipped, plots)


def prediction_columns(classes: tuple[str, ...]) -> list[str]:
    """The keys of every row of a prediction file, in column order."""
    return ["path", "prob_covid", "label", *(f"prob_{n}" for n in classes), "in_distribution", "ood_score", "message", *_STUDY_COLUMNS]


def _row(p: Prediction, classes: tuple[str, ...]) -> dict:
    return {
        **dict.fromkeys(prediction_columns(classes)),
        "path": p.path, "prob_covid": p.prob_covid, "label": p.label, **{f"prob_{n}": p.probabilities.get(n) for n in classes},
        "in_distribution": p.in_distribution, "ood_score": p.ood_score, "message": p.message, "kind": "image",
    }


def _study_row(study: StudyPrediction, classes: tuple[str, ...], plot: Path | None) -> dict:
    return {
        **dict.fromkeys(prediction_columns(classes)),
        "path": study.source, "prob_covid": study.prob_covid, "label": study.label, "in_distribution": study.in_distribution,
        "ood_score": study.ood_score, "message": study.message, "kind": "study", "study_key": study.study_key, "series_key": study.series_key,
        "n_slices_total": study.n_slices_total, "n_slices_used": study.n_slices_used, "aggregate": study.aggregate, "plot": None if plot is None else str(plot),
    }


def _slice_row(study: StudyPrediction, item: SlicePrediction, classes: tuple[str, ...]) -> dict:
    return {
        **dict.fromkeys(prediction_columns(classes)),
        "path": study.source, "prob_covid": item.prob_covid, "label": item.label, "in_distribution": item.in_distribution, "ood_score": item.ood_score,
        "kind": "slice", "study_key": study.study_key, "series_key": study.series_key, "slice": item.name, "slice_index": item.index,
    }


def write_plots(studies: Sequence[StudyPrediction], plots_dir: Path | None) -> list[Path]:
    """Each study's probability plot in ``plots_dir`` (names from path and hashed keys); none without a folder."""
    if plots_dir is None or not studies:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    return [plot_study(study, plots_dir / name) for study, name in zip(studies, study_file_names(studies, ".png"), strict=True)]


def write_study_overlays(studies: Sequence[StudyPrediction], cam_dir: Path) -> list[Path]:
    """The Grad-CAM overlay of each study's most suspicious slice, as ``cam_dir/<study file name>_cam.png``."""
    explained = [study for study in studies if study.cam_heatmap is not None]
    cam_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for study, name in zip(explained, study_file_names(explained, "_cam.png"), strict=True):
        top = study.suspicious_slices[0]
        caption = f"slice {top.index}: P(COVID) = {top.prob_covid:.3f}; study {study.label}"
        render_overlay(study.cam_slice, study.cam_heatmap, caption).save(cam_dir / name)
        paths.append(cam_dir / name)
    return paths


def _score(ood_score: float | None) -> str:
    return "-" if ood_score is None else f"{ood_score:.1f}"


def write_overlays(explanations: list[Explanation], cam_dir: Path) -> list[Path]:
    """Write each explanation's overlay as ``cam_dir/<stem>_cam.png`` (unique names); return the paths."""
    cam_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for explanation, name in zip(explanations, overlay_names([e.path for e in explanations]), strict=True):
        path = cam_dir / name
        render_overlay(explanation.slice, explanation.heatmap, overlay_caption(explanation.prediction.label, explanation.prediction.prob_covid, explanation.prediction.ood_score)).save(path)
        paths.append(path)
    return paths
