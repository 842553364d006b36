"""Terminal output shared by the commands: one-line errors, progress bars, failure tables."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from covidct.errors import CovidctError, OptionError
from covidct.io.failures import InputFailure

console = Console()
err_console = Console(stderr=True)


def reports_errors(command: Callable) -> Callable:
    """Print a ``CovidctError`` as one line and exit 2, without a traceback; anything else is a bug and keeps it."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CovidctError as error:
            message = error.as_flags() if isinstance(error, OptionError) else str(error)
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def new_progress() -> Progress:
    """A rich progress display with description, bar, counts, elapsed and remaining time."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        transient=False,
    )


@contextmanager
def progress_callback(description: str) -> Iterator[Callable[[int, int], None]]:
    """A (done, total) callback drawing one progress bar for the duration of the block."""
    with new_progress() as bar:
        task = bar.add_task(description, total=None, status="")

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_failures(failures: Sequence[InputFailure], *, title: str = "Inputs that failed") -> None:
    """A table of every failed input (path and reason), or nothing when there are none."""
    if not failures:
        return
    table = Table(title=f"{title} ({len(failures)})", title_style="bold red", show_lines=False)
    table.add_column("path", overflow="fold")
    table.add_column("reason", overflow="fold")
    for failure in failures:
        table.add_row(failure.path, failure.reason)
    err_console.print(table)
