"""Output as a person reads it in a log: plain progress lines at a readable rate, paths that fit the width."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from covidct.cli.console import Lines, PlainProgress, display_path, fitted_table


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain_progress() -> tuple[PlainProgress, Clock, io.StringIO]:
    out, clock = io.StringIO(), Clock()
    return PlainProgress(Console(file=out, width=100), interval_s=10.0, clock=clock), clock, out


def test_a_task_prints_when_it_finishes_and_at_most_once_per_interval_while_it_runs():
    progress, clock, out = plain_progress()
    task = progress.add_task("decoding train", total=None, status="")

    for done in range(1, 121):
        clock.now = done * 0.25  # 120 files in 30 s
        progress.update(task, completed=done, total=120)

    assert out.getvalue().splitlines() == [
        "decoding train: 40/120 (33%) 0:00:10",
        "decoding train: 80/120 (67%) 0:00:20",
        "decoding train: 120/120 (100%) 0:00:30",
    ]


def test_each_epoch_prints_a_line_and_its_steps_only_after_a_long_wait():
    progress, clock, out = plain_progress()
    with progress:
        epochs = progress.add_task("epochs", total=None, status="", lines=Lines.EACH)
        steps = progress.add_task("  steps", total=4, status="", lines=Lines.TIMED)
        for epoch in range(2):
            for step in range(1, 5):
                clock.now += 1.0
                progress.update(steps, completed=step, total=4, status=f"loss {0.5 / step:.3f}")
            progress.update(
                epochs, completed=epoch + 1, total=2, status=f"epoch {epoch + 1}: val AUC 0.8{epoch}"
            )
        clock.now += 30.0
        progress.update(steps, completed=1, total=4, status="loss 0.100")

    assert out.getvalue().splitlines() == [
        "epochs: 1/2 (50%) 0:00:04 epoch 1: val AUC 0.80",
        "epochs: 2/2 (100%) 0:00:08 epoch 2: val AUC 0.81",
        "steps: 1/4 (25%) 0:00:38 loss 0.100",
    ]


def test_an_unfinished_task_without_a_total_shows_its_count():
    progress, clock, out = plain_progress()
    task = progress.add_task("reading images")
    clock.now = 12.0
    progress.update(task, completed=7)

    assert out.getvalue() == "reading images: 7 0:00:12\n"


@pytest.mark.parametrize(
    ("path", "width", "shown"),
    [
        pytest.param("scans/a.png", 40, "scans/a.png", id="short-relative"),
        pytest.param(
            "/data/hospital/2024/ct/a.png", 16, "…/2024/ct/a.png", id="long-shortened-from-the-left"
        ),
        pytest.param("/data/a_very_long_file_name.png", 12, "…le_name.png", id="long-file-name"),
    ],
)
def test_display_path_keeps_the_end_of_a_long_path(path, width, shown):
    assert display_path(path, width) == shown
    assert len(display_path(path, width)) <= width


def test_display_path_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert display_path(str(tmp_path / "scans" / "a.png"), 80) == "scans/a.png"


def test_a_fitted_table_keeps_each_path_on_one_line_within_the_width():
    out = io.StringIO()
    console = Console(file=out, width=60)
    rows = [
        [f"/very/long/folder/name/number/{i}/of/the/hospital/archive/slice_{i}.png", "0.9731", "COVID"]
        for i in range(3)
    ]

    console.print(fitted_table(["path", "prob_covid", "label"], rows, console=console))

    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 60
    assert [sum(f"slice_{i}.png" in line for line in lines) for i in range(3)] == [1, 1, 1]
