"""The ``covidct`` command: one sub-command per module of this package."""

from __future__ import annotations

import typer

from covidct.cli import (
    audit,
    demo,
    evaluate,
    export,
    pacs,
    predict,
    preprocess_preview,
    pretrain,
    serve,
    train,
    weights,
)
from covidct.intended_use import RESEARCH_USE_STATEMENT

app = typer.Typer(
    name="covidct",
    help=(
        "COVID-19 detection in chest CT slices with an "
        f"ImageNet-pretrained ResNet-50.\n\n{RESEARCH_USE_STATEMENT}"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command()(train.train)
app.command()(evaluate.evaluate)
app.command()(predict.predict)
app.command()(export.export)
app.command()(demo.demo)
app.command()(audit.audit)
app.command("preprocess-preview")(preprocess_preview.preprocess_preview)
app.command()(pretrain.pretrain)
app.command()(serve.serve)
app.add_typer(weights.app, name="weights")
app.add_typer(pacs.app, name="pacs")


def main() -> None:
    """Console-script entry point."""
    app()
