"""Terminal output shared by the commands: one-line errors, progress (bars or lines), tables that fit."""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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
from rich.text import Text

from covidct.errors import CovidctError, OptionError
from covidct.io.failures import InputFailure

console = Console()
err_console = Console(stderr=True)


def reports_errors(command: Callable) -> Callable:
    """Print a ``CovidctError`` as one line and exit 2, without a traceback; anything else
    is a bug and keeps it."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CovidctError as error:
            message = error.as_flags() if isinstance(error, OptionError) else str(error)
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def new_progress() -> Progress | PlainProgress:
    """Progress bars on a terminal; plain lines at a readable rate when stderr is a log or a pipe.

    Both take ``add_task(description, total=, status=, lines=)`` and
    ``update(task, completed=, total=, status=)``; ``lines`` says when a plain task prints (see
    ``PlainProgress``; a rich display ignores it).
    """
    if not err_console.is_terminal:
        return PlainProgress(err_console)
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


class Lines(StrEnum):
    """When a task of ``PlainProgress`` prints a line, besides once per interval while it moves."""

    FINISH = "finish"  # and when it finishes
    EACH = "each"  # and on every step (one line per epoch)
    TIMED = "timed"  # no more (the steps of an epoch)


@dataclass
class _PlainTask:
    description: str
    total: int | None
    status: str
    lines: Lines
    started: float
    completed: int = 0
    last_line: float = 0.0
    logged: tuple[int, int | None] | None = None


class PlainProgress:
    """Progress as whole lines, for logs and pipes where a redrawn bar turns into fragments.

    A task prints a line when it moved and ``interval_s`` passed since its last one, and more often
    as its ``Lines`` say. A line reads ``decoding train: 96/120 (80%) 0:00:12`` and the task's status.
    """

    def __init__(
        self, console: Console, *, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console
        self.interval_s = interval_s
        self.clock = clock
        self.tasks: list[_PlainTask] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add_task(
        self, description: str, *, total: int | None = None, status: str = "", lines: Lines = Lines.FINISH
    ) -> int:
        now = self.clock()
        self.tasks.append(
            _PlainTask(description.strip(), total, status, Lines(lines), started=now, last_line=now)
        )
        return len(self.tasks) - 1

    def update(
        self,
        task_id: int,
        *,
        completed: int | None = None,
        total: int | None = None,
        status: str | None = None,
    ) -> None:
        task = self.tasks[task_id]
        task.completed = task.completed if completed is None else completed
        task.total = task.total if total is None else total
        task.status = task.status if status is None else status
        now, state = self.clock(), (task.completed, task.total)
        is_finished = task.total is not None and task.completed >= task.total
        is_due = (
            now - task.last_line >= self.interval_s
            or task.lines is Lines.EACH
            or (is_finished and task.lines is Lines.FINISH)
        )
        if state != task.logged and is_due:
            self.console.print(self._line(task, now), highlight=False, markup=False, soft_wrap=True)
            task.last_line, task.logged = now, state

    def _line(self, task: _PlainTask, now: float) -> str:
        count = (
            f"{task.completed}"
            if not task.total
            else f"{task.completed}/{task.total} ({task.completed / task.total:.0%})"
        )
        elapsed = str(datetime.timedelta(seconds=round(now - task.started)))
        return " ".join(part for part in (f"{task.description}: {count}", elapsed, task.status) if part)


@contextmanager
def progress_callback(description: str) -> Iterator[Callable[[int, int], None]]:
    """A (done, total) callback drawing one progress bar (plain lines in a log) for the block."""
    with new_progress() as bar:
        task = bar.add_task(description, total=None, status="")

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_failures(failures: Sequence[InputFailure], *, title: str = "Inputs that failed") -> None:
    """A table of every failed input (path and reason), or nothing when there are none."""
    if not failures:
        return
    rows = [[failure.path, failure.reason] for failure in failures]
    title = f"[bold red]{title} ({len(failures)})[/]"
    err_console.print(
        fitted_table(["path", "reason"], rows, wrap_column="reason", console=err_console, title=title)
    )


def fitted_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    path_columns: Sequence[str] = ("path",),
    wrap_column: str | None = None,
    console: Console = console,
    title: str | None = None,
    caption: str | None = None,
) -> Table:
    """A table as wide as ``console``: each cell on one line, paths shortened to fit (see ``display_path``).

    Only ``wrap_column`` (a reason, say) wraps; it gets what the others leave, and the paths at most half
    of that. Cells are printed as they are (no rich markup), so a file named "[bold].png" stays literal.
    """
    widths = [
        max(len(cell) for cell in [column, *(row[i] for row in rows)]) for i, column in enumerate(columns)
    ]
    fixed = sum(w for c, w in zip(columns, widths, strict=True) if c not in path_columns and c != wrap_column)
    left = console.width - fixed - (3 * len(columns) + 1)  # a rule and a space either side of each cell
    n_paths = max(1, sum(column in path_columns for column in columns))
    path_width = max(16, (left // 2 if wrap_column in columns else left) // n_paths)
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(
            column, no_wrap=column != wrap_column, overflow="fold", min_width=min(len(column), 12)
        )
    for row in rows:
        cells = (
            display_path(cell, path_width) if column in path_columns else cell
            for column, cell in zip(columns, row, strict=True)
        )
        table.add_row(*(Text(cell) for cell in cells))
    return table


def display_path(path: str, width: int) -> str:
    """``path`` relative to the working directory when under it; longer than ``width``, "…" and its end.

    The end starts at a folder boundary when one is in reach, so the file name and its nearest folders
    stay whole.
    """
    if Path(path).is_absolute() and Path(path).is_relative_to(Path.cwd()):
        path = str(Path(path).relative_to(Path.cwd()))
    if len(path) <= width:
        return path
    tail = path[len(path) - width + 1 :]
    boundary = tail.find("/")
    return "…" + (tail[boundary:] if boundary > 0 else tail)
