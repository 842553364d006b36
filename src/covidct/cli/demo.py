"""``covidct demo``: the whole workflow on the bundled sample, in a few minutes on a laptop CPU."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from covidct.cli.console import console, progress_callback, reports_errors
from covidct.cli.evaluate import print_evaluation
from covidct.cli.predict import print_predictions
from covidct.cli.train import WeightsOpt, print_training_summary, run_training
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.train.config import TrainConfig


def demo_manifest_path() -> Path:
    """The bundled demo manifest (200 SARS-CoV-2 CT slices, CC BY-NC-SA 4.0; see its ATTRIBUTION.md)."""
    return Path(str(files("covidct") / "demo" / "manifest.csv"))


@reports_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the model, the evaluation and the predictions.")
    ] = Path("covidct-demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs on the 120-slice training split.")] = 8,
    weights: WeightsOpt = "auto",
) -> None:
    """Fetch ImageNet weights, fine-tune on the bundled sample, evaluate on its held-out
    blocks, predict a few slices."""
    from covidct.data.manifest import read_manifest
    from covidct.evaluate.run import evaluate_model
    from covidct.infer.predictor import load_model

    console.print(f"[bold]{RESEARCH_USE_STATEMENT}[/]")
    manifest = read_manifest(demo_manifest_path())
    console.print(
        f"Demo data: {len(manifest.samples)} slices from the SARS-CoV-2 "
        "CT-scan dataset (CC BY-NC-SA 4.0), split by scan block."
    )
    result = run_training(manifest, out / "model", TrainConfig(epochs=epochs), weights=weights, resume=False)
    print_training_summary(result)
    with progress_callback("evaluating on the held-out test blocks") as progress:
        evaluation = evaluate_model(
            out / "model", manifest, out / "evaluation", split="test", progress=progress
        )
    print_evaluation(evaluation)
    test_paths = [s.path for s in manifest.select("test").samples]
    examples = test_paths[:3] + test_paths[-3:]
    print_predictions(load_model(out / "model").predict(examples))
    console.print(f"Open the report: [bold]{evaluation.report_path.resolve()}[/]")
