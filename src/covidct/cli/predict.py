"""``covidct predict``: run a model directory on image files, DICOM series, NIfTI
volumes and folders of them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from covidct.cli.console import (
    console,
    display_path,
    err_console,
    fitted_table,
    print_failures,
    progress_callback,
    reports_errors,
)
from covidct.cli.options import DeviceOpt, EngineOpt, ModelDirArg
from covidct.errors import CovidctWarning, OptionError
from covidct.infer.engine_kind import Engine
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.io.budget import DEFAULT_REQUEST_VOXELS, MAX_PIXELS
from covidct.model.device import Device, resolve_device
from covidct.preprocess.window import HuWindow

if TYPE_CHECKING:  # runtime imports sit in the functions that use them: --help loads no torch (issue 16)
    from covidct.infer.predictor import Explanation, PredictionRun, Predictor
    from covidct.infer.study import StudyPrediction


@reports_errors
def predict(
    model_dir: ModelDirArg,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help=(
                "Image files (PNG/JPEG: already windowed), DICOM files, NIfTI files, "
                "and folders (walked recursively; one result per DICOM series)."
            )
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the results to FILE.csv or FILE.json instead of a table."),
    ] = None,
    cam: Annotated[
        Path | None,
        typer.Option(
            "--cam",
            help=(
                "Also write a Grad-CAM overlay per image, or per most suspicious "
                "slice of a study, to DIR (slower: one backward pass each)."
            ),
        ),
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            help=(
                "Write each study's probability-along-the-slices PNG to DIR "
                "(default: FILE_plots/ beside --out FILE; none without --out)."
            ),
        ),
    ] = None,
    per_slice: Annotated[
        bool,
        typer.Option("--per-slice", help="Also give one row per scored slice of each study (kind 'slice')."),
    ] = False,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels",
            help=(
                "Refuse an image (or a DICOM/NIfTI slice) whose header claims "
                "more pixels than this, before decoding it (decompression bombs)."
            ),
        ),
    ] = MAX_PIXELS,
    max_voxels: Annotated[
        int,
        typer.Option(
            "--max-voxels",
            help="Refuse a DICOM series or NIfTI volume whose headers "
            "claim more voxels than this, before decoding it "
            "(its memory: 4 bytes a voxel).",
        ),
    ] = DEFAULT_REQUEST_VOXELS,
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help=(
                "HU window LEVEL,WIDTH for DICOM/NIfTI, e.g. "
                "-600,1500 (default: the model's, from model.json)."
            ),
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    device: DeviceOpt = Device.AUTO,
    engine: EngineOpt = Engine.TORCH,
    decode_workers: Annotated[
        int | None,
        typer.Option(
            "--decode-workers",
            help=(
                "Processes that decode files (0: one thread beside the network). Default: "
                "half the cores (up to 8) when torch runs on a GPU; on the CPU (and for "
                "the onnx engines), none below 8 cores, else a quarter (up to 4)."
            ),
        ),
    ] = None,
) -> None:
    """Predict COVID-19 probability for each image and each study; exits 1 if any input failed (all
    others are still predicted).

    Images that do not look like the chest CT slices the model was trained on get the label not-ct
    and no probability. A study (DICOM series, NIfTI volume) is scored on its lung slices only and
    gets one probability by the model card's aggregation rule. Studies are named by file path and
    hashed keys, never by patient attributes.
    """
    from covidct.infer.predictor import PredictionRun, load_model
    from covidct.infer.result_files import check_prediction_path, write_plots, write_predictions
    from covidct.infer.stream import default_decode_workers

    for option, folder in (("--cam", cam), ("--plots", plots)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise OptionError(f"{option} must be a folder; '{folder}' is a file")
    if out is not None:
        check_prediction_path(out)
    predictor = load_model(
        model_dir,
        device=device,
        batch_size=batch_size,
        engine=engine,
        window=None if window is None else HuWindow.parse(window),
        max_pixels=max_pixels,
        max_voxels=max_voxels,
        decode_workers=default_decode_workers(
            resolve_device(device).type if engine is Engine.TORCH else "cpu"
        )
        if decode_workers is None
        else decode_workers,
    )
    warn_if_window_differs(predictor)
    plots = plots if plots is not None or out is None else out.with_name(f"{out.stem}_plots")
    with progress_callback("explaining" if cam else "predicting") as progress:
        if cam is not None:
            explained = predictor.explain(inputs, progress=progress)
            run = PredictionRun(
                explained.predictions, explained.failures, explained.skipped, explained.studies
            )
        elif out is None:
            run = predictor.predict(inputs, progress=progress)
        else:
            # streamed: each batch's rows are written as soon as it is done, so memory stays flat
            # however many files
            run = write_predictions(
                predictor.iter_predict(inputs, progress=progress), out, per_slice=per_slice, plots_dir=plots
            )
    if out is None:
        plotted = write_plots(run.studies, plots)
        print_predictions(run, per_slice=per_slice)
    else:
        if cam is not None:
            run = write_predictions(run, out, per_slice=per_slice, plots_dir=plots)
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
    """Warn when ``--window`` is not the window the model was trained with: its
    probabilities are then off-card."""
    trained, used = predictor.card.preprocessing.hu_window, predictor.preprocessing.hu_window
    if used != trained:
        warnings.warn(
            f"--window {used} differs from the window the model was trained with ({trained}); "
            "its probabilities and threshold were calibrated for that one",
            CovidctWarning,
            stacklevel=2,
        )


def print_predictions(run: PredictionRun, *, per_slice: bool = False) -> None:
    """Print a table of the images, one of the studies (if any), and with ``per_slice`` each study's slices.

    Each figure appears once, each cell on one line: ``prob_covid`` ("-" when the guard flagged the
    input), and under each table the messages (why an input has no probability, what the guard left out).
    """
    if run.predictions or not run.studies:
        rows = [[p.path, _probability(p.prob_covid), p.label, _score(p.ood_score)] for p in run.predictions]
        _print_table(
            ["path", "prob_covid", "label", "ood_score"], rows, [(p.path, p.message) for p in run.predictions]
        )
    if run.studies:
        rows = [
            [s.source, _probability(s.prob_covid), s.label, f"{s.n_slices_used} / {s.n_slices_total}"]
            for s in run.studies
        ]
        title = f"Studies (probability: {run.studies[0].aggregate} of the lung slices used)"
        _print_table(
            ["path", "prob_covid", "label", "slices used / total"],
            rows,
            [(s.source, s.message) for s in run.studies],
            title=title,
        )
    for study in run.studies if per_slice else []:
        rows = [
            [item.name, str(item.index), _probability(item.prob_covid), item.label, _score(item.ood_score)]
            for item in study.slices
        ]
        columns = ["slice", "slice_index", "prob_covid", "label", "ood_score"]
        _print_table(
            columns, rows, [], path_columns=("slice",), title=f"Slices of {study.source}", caption=None
        )


def _print_table(
    columns: list[str],
    rows: list[list[str]],
    messages: list[tuple[str, str]],
    *,
    caption: str | None = RESEARCH_USE_STATEMENT,
    **options,
) -> None:
    """One fitted table (with the research-use statement), then "path: message" for each row with one."""
    console.print(fitted_table(columns, rows, caption=caption, **options))
    for path, message in messages:
        if message:
            console.print(Text(f"{display_path(path, len(path))}: {message}"))


def _probability(prob_covid: float | None) -> str:
    return "-" if prob_covid is None else f"{prob_covid:.4f}"


def write_study_overlays(studies: Sequence[StudyPrediction], cam_dir: Path) -> list[Path]:
    """The Grad-CAM overlay of each study's most suspicious slice, as
    ``cam_dir/<study file name>_cam.png``."""
    from covidct.infer.overlay import render_overlay
    from covidct.infer.study_plot import study_file_names

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
    from covidct.infer.overlay import overlay_caption, overlay_names, render_overlay

    cam_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for explanation, name in zip(explanations, overlay_names([e.path for e in explanations]), strict=True):
        path = cam_dir / name
        render_overlay(
            explanation.slice,
            explanation.heatmap,
            overlay_caption(
                explanation.prediction.label,
                explanation.prediction.prob_covid,
                explanation.prediction.ood_score,
            ),
        ).save(path)
        paths.append(path)
    return paths
