"""Prediction files (CSV or JSON) written a batch at a time, so a run over millions of slices keeps no rows in memory.

CSV: a header, then one row per prediction (image, study, or slice of a study), flushed after each batch (an interrupted run leaves
every row done so far). JSON keeps its one-document shape, ``{"notice", "predictions", "failures"}``,
written incrementally: one prediction object per line inside the ``predictions`` array, and the
failures (usually few) at the end. The JSON is closed only when the run finishes: an interrupted run
leaves it unterminated, so a partial file cannot pass for a complete one (its lines stay readable).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from covidct.io.failures import InputFailure


@dataclass(frozen=True)
class WrittenPredictions:
    """What a prediction file received: the number of rows, every failure and skipped file, the studies' plots.

    Attributes:
        n_predictions: image and study rows (per-slice rows not counted).
        plots: the probability plot of each study, in row order.
    """

    n_predictions: int
    failures: list[InputFailure]
    skipped: list[InputFailure]
    plots: list[Path] = field(default_factory=list)


class PredictionFile:
    """``path`` (.csv or .json) opened for prediction rows with ``fieldnames``; use it as a context manager.

    Args:
        path: FILE.csv or FILE.json (the suffix decides; the CLI validates it).
        fieldnames: the keys of every row, in column order.
        notice: the statement at the top of a JSON file (the research-use notice).
    """

    def __init__(self, path: Path, fieldnames: Sequence[str], *, notice: str) -> None:
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.notice = notice
        self.is_json = self.path.suffix.lower() == ".json"
        self.n_rows = 0
        self._failures: list[dict] = []
        self._handle: IO[str] | None = None
        self._csv: csv.DictWriter | None = None

    def __enter__(self) -> PredictionFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("w", newline="" if not self.is_json else None, encoding="utf-8")
        if self.is_json:
            self._handle.write(f'{{"notice": {json.dumps(self.notice)},\n "predictions": [')
        else:
            self._csv = csv.DictWriter(self._handle, fieldnames=self.fieldnames)
            self._csv.writeheader()
        return self

    def write(self, rows: Sequence[dict], failures: Sequence[InputFailure] = ()) -> None:
        """Append ``rows`` (and, for JSON, remember ``failures`` for the end) and flush them to disk."""
        if self.is_json:
            for row in rows:
                self._handle.write(("\n  " if self.n_rows == 0 else ",\n  ") + json.dumps(row))
                self.n_rows += 1
            self._failures += [{"path": f.path, "reason": f.reason} for f in failures]
        else:
            self._csv.writerows(rows)  # None is written as an empty cell
            self.n_rows += len(rows)
        self._handle.flush()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        if self.is_json and error is None:
            failures = ",\n  ".join(json.dumps(f) for f in self._failures)
            self._handle.write(("\n ]" if self.n_rows else "]") + ',\n "failures": [' + (f"\n  {failures}\n ]" if failures else "]") + "}\n")
        self._handle.close()
