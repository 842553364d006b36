"""``covidct audit``: report what could make metrics on a dataset lie, before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from covidct.cli.console import console, progress_callback, reports_errors
from covidct.cli.options import (
    DataArg,
    GroupCol,
    LabelCol,
    PathCol,
    PositiveClass,
    SplitCol,
    load_dataset,
)

if TYPE_CHECKING:
    from covidct.data.audit import AuditResult


@reports_errors
def audit(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.json and audit.html.")] = Path(
        "covidct-audit"
    ),
    path_col: PathCol = "path",
    label_col: LabelCol = "label",
    group_col: GroupCol = None,
    split_col: SplitCol = None,
    positive_class: PositiveClass = "COVID",
) -> None:
    """Check DATA for label shortcuts (file format, size...), duplicates across classes and splits,
    patient leaks and class balance.

    Findings are warnings, not errors: the command exits 0 whatever it finds.
    """
    from covidct.data.audit import audit_manifest
    from covidct.data.audit_report import write_audit

    manifest = load_dataset(
        data,
        path_col=path_col,
        label_col=label_col,
        group_col=group_col,
        split_col=split_col,
        positive_class=positive_class,
    )
    with progress_callback("reading images") as progress:
        result = audit_manifest(manifest, progress=progress)
    json_path, html_path = write_audit(out, result)
    print_findings(result)
    console.print(f"Report: [bold]{escape(str(html_path))}[/] (data in {json_path.name})", highlight=False)


def print_findings(result: AuditResult, *, warnings_only: bool = False) -> None:
    """One table row per finding, warnings first; messages are printed as plain text, never as markup."""
    from covidct.data.audit import Severity

    warnings = len(result.warnings)
    table = Table(title=f"Audit of {result.n_images} images: {warnings} warning(s)", show_lines=True)
    table.add_column("severity")
    table.add_column("check")
    table.add_column("finding", overflow="fold")
    for finding in result.warnings if warnings_only else result.findings:
        style = "bold yellow" if finding.severity is Severity.WARNING else "dim"
        table.add_row(Text(finding.severity.value, style=style), Text(finding.code), Text(finding.message))
    console.print(table)
