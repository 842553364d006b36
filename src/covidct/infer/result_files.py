"""Prediction files (CSV or JSON), as ``covidct predict --out`` writes them and Python code can too.

Rows: one per image (``kind`` image), per study (``kind`` study) and, with ``per_slice``, per scored
slice of a study (``kind`` slice). Every row has every column of ``PREDICTION_COLUMNS``, one rule for
every kind: a column a kind does not have is empty in CSV and null in JSON. The probability is
``prob_covid`` alone (the positive class's; a study's is the aggregate of its slices), so each figure
appears once; ``Prediction.probabilities`` keeps every class's for Python code.

Written a batch at a time, so a run over millions of slices keeps no rows in memory. CSV: a header,
then the rows, flushed after each batch (an interrupted run leaves every row done so far). JSON keeps
its one-document shape, ``{"notice", "predictions", "failures"}``, written incrementally: one
prediction object per line inside the ``predictions`` array, and the failures (usually few) at the
end. The JSON is closed only when the run finishes: an interrupted run leaves it unterminated, so a
partial file cannot pass for a complete one (its lines stay readable).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from covidct.errors import OptionError
from covidct.infer.predictor import Prediction, PredictionRun
from covidct.infer.study import SlicePrediction, StudyPrediction
from covidct.infer.study_plot import plot_study, study_file_names
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.io.failures import InputFailure

PREDICTION_COLUMNS = (
    "path",
    "prob_covid",
    "label",
    "in_distribution",
    "ood_score",
    "message",
    # filled by studies and their slices only
    "kind",
    "study_key",
    "series_key",
    "slice",
    "slice_index",
    "n_slices_total",
    "n_slices_used",
    "aggregate",
    "plot",
)


@dataclass(frozen=True)
class WrittenPredictions:
    """What a prediction file received: the number of rows, every failure and skipped
    file, the studies' plots.

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

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.is_json and error is None:
            failures = ",\n  ".join(json.dumps(f) for f in self._failures)
            self._handle.write(
                ("\n ]" if self.n_rows else "]")
                + ',\n "failures": ['
                + (f"\n  {failures}\n ]" if failures else "]")
                + "}\n"
            )
        self._handle.close()


def check_prediction_path(out: str | Path) -> Path:
    """``out`` as a Path when it names a .csv or .json file.

    Raises:
        OptionError: any other suffix.
    """
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise OptionError(f"out must end in .csv or .json; got '{out.name}'", parameters=("out",))
    return out


def write_predictions(
    runs: PredictionRun | Iterable[PredictionRun],
    out: str | Path,
    *,
    per_slice: bool = False,
    plots_dir: str | Path | None = None,
) -> WrittenPredictions:
    """Write the rows of ``runs`` to ``out`` (.csv or .json) as they come, as ``covidct predict --out`` does.

    ``runs`` is one ``Predictor.predict`` result or the batches of ``Predictor.iter_predict`` (then memory
    stays flat however many files). Each study's probability plot goes to ``plots_dir`` (none without
    one) as its row is written. Rows are not kept: the result holds their count, the failures, skipped
    files and plots.

    Raises:
        OptionError: ``out`` does not end in .csv or .json.
    """
    out = check_prediction_path(out)
    plots_dir = None if plots_dir is None else Path(plots_dir)
    failures, skipped, plots, n_predictions = [], [], [], 0
    with PredictionFile(out, PREDICTION_COLUMNS, notice=RESEARCH_USE_STATEMENT) as file:
        for run in [runs] if isinstance(runs, PredictionRun) else runs:
            study_plots = write_plots(run.studies, plots_dir) or [None] * len(run.studies)
            rows = [image_row(p) for p in run.predictions]
            for study, plot in zip(run.studies, study_plots, strict=True):
                rows.append(study_row(study, plot))
                rows += [slice_row(study, item) for item in study.slices] if per_slice else []
            file.write(rows, run.failures)
            failures += run.failures
            skipped += run.skipped
            plots += [plot for plot in study_plots if plot is not None]
            n_predictions += len(run.predictions) + len(run.studies)
    return WrittenPredictions(n_predictions, failures, skipped, plots)


def write_plots(studies: Sequence[StudyPrediction], plots_dir: Path | None) -> list[Path]:
    """Each study's probability plot in ``plots_dir`` (named by path and hashed keys); none without one."""
    if plots_dir is None or not studies:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_study(study, plots_dir / name)
        for study, name in zip(studies, study_file_names(studies, ".png"), strict=True)
    ]


def image_row(p: Prediction) -> dict:
    """The row of a 2-D image."""
    return _row(
        path=p.path,
        prob_covid=p.prob_covid,
        label=p.label,
        in_distribution=p.in_distribution,
        ood_score=p.ood_score,
        message=p.message,
        kind="image",
    )


def study_row(study: StudyPrediction, plot: Path | None = None) -> dict:
    """The row of a study (DICOM series, NIfTI volume), with its probability plot if one was written."""
    return _row(
        path=study.source,
        prob_covid=study.prob_covid,
        label=study.label,
        in_distribution=study.in_distribution,
        ood_score=study.ood_score,
        message=study.message,
        kind="study",
        study_key=study.study_key,
        series_key=study.series_key,
        n_slices_total=study.n_slices_total,
        n_slices_used=study.n_slices_used,
        aggregate=study.aggregate,
        plot=None if plot is None else str(plot),
    )


def slice_row(study: StudyPrediction, item: SlicePrediction) -> dict:
    """The row of one scored slice of ``study``."""
    return _row(
        path=study.source,
        prob_covid=item.prob_covid,
        label=item.label,
        in_distribution=item.in_distribution,
        ood_score=item.ood_score,
        kind="slice",
        study_key=study.study_key,
        series_key=study.series_key,
        slice=item.name,
        slice_index=item.index,
    )


def _row(**values: object) -> dict:
    """Every column of ``PREDICTION_COLUMNS`` in order: ``values``, None for those a row kind lacks."""
    return {**dict.fromkeys(PREDICTION_COLUMNS), **values}
