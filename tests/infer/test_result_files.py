"""Prediction files: rows reach the disk batch by batch, JSON stays one document, one rule for every kind."""

from __future__ import annotations

import csv
import json

import pytest

from covidct.errors import OptionError
from covidct.infer.predictor import Prediction, PredictionRun
from covidct.infer.result_files import PREDICTION_COLUMNS, PredictionFile, write_predictions
from covidct.infer.study import SlicePrediction, StudyPrediction
from covidct.io.failures import InputFailure

FIELDS = ["path", "prob_covid", "label"]
BATCHES = [
    (
        [
            {"path": "a.png", "prob_covid": 0.9, "label": "COVID"},
            {"path": "b.png", "prob_covid": 0.1, "label": "non-COVID"},
        ],
        [],
    ),
    ([], [InputFailure("bad.png", "empty file")]),
    ([{"path": "c.png", "prob_covid": None, "label": "not-ct"}], []),
]


def read_csv(path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_rows_are_on_disk_as_soon_as_their_batch_is_written(tmp_path):
    out = tmp_path / "sub" / "x.csv"
    on_disk = []

    with PredictionFile(out, FIELDS, notice="research use only") as file:
        for rows, failures in BATCHES:
            file.write(rows, failures)
            on_disk.append([row["path"] for row in read_csv(out)])

    assert on_disk == [["a.png", "b.png"], ["a.png", "b.png"], ["a.png", "b.png", "c.png"]]
    assert read_csv(out)[2] == {"path": "c.png", "prob_covid": "", "label": "not-ct"}
    assert file.n_rows == 3


def test_json_keeps_notice_predictions_and_failures(tmp_path):
    out = tmp_path / "x.json"

    with PredictionFile(out, FIELDS, notice="research use only") as file:
        for rows, failures in BATCHES:
            file.write(rows, failures)

    assert json.loads(out.read_text()) == {
        "notice": "research use only",
        "predictions": [row for rows, _ in BATCHES for row in rows],
        "failures": [{"path": "bad.png", "reason": "empty file"}],
    }
    assert len(out.read_text().splitlines()) == 9  # one line per prediction and per failure


@pytest.mark.parametrize("batches", [[], [([], [])]], ids=["no-batch", "empty-batch"])
def test_json_with_no_predictions_is_still_valid(tmp_path, batches):
    out = tmp_path / "x.json"

    with PredictionFile(out, FIELDS, notice="n") as file:
        for rows, failures in batches:
            file.write(rows, failures)

    assert json.loads(out.read_text()) == {"notice": "n", "predictions": [], "failures": []}


def test_an_interrupted_json_is_left_unterminated(tmp_path):
    out = tmp_path / "x.json"

    with pytest.raises(KeyboardInterrupt), PredictionFile(out, FIELDS, notice="n") as file:
        file.write(*BATCHES[0])
        raise KeyboardInterrupt

    with pytest.raises(json.JSONDecodeError):
        json.loads(out.read_text())
    assert '"path": "b.png"' in out.read_text().splitlines()[-1]


def _run_with_an_image_a_study_and_a_flagged_slice() -> PredictionRun:
    image = Prediction("a.png", 0.8, "COVID", {"COVID": 0.8, "non-COVID": 0.2}, True, 3.0)
    slices = (
        SlicePrediction("s#2", 2, 0.7, "COVID", True, 2.0),
        SlicePrediction("s#3", 3, None, "not-ct", False, 99.0),
    )
    study = StudyPrediction(
        source="scans/s",
        study_key="ab12",
        series_key="cd34",
        prob_covid=0.7,
        label="COVID",
        threshold=0.5,
        n_slices_total=5,
        n_slices_used=1,
        aggregate="top 25% mean",
        slices=slices,
        ood_score=50.5,
        message="1 of 2 lung slices do not look like ...",
    )
    return PredictionRun([image], [InputFailure("bad.png", "empty file")], [], [study])


def test_every_row_kind_has_the_same_columns_and_one_probability(tmp_path):
    written = write_predictions(
        _run_with_an_image_a_study_and_a_flagged_slice(), tmp_path / "x.json", per_slice=True
    )

    rows = json.loads((tmp_path / "x.json").read_text())["predictions"]
    assert (written.n_predictions, [f.path for f in written.failures]) == (2, ["bad.png"])
    assert [row["kind"] for row in rows] == ["image", "study", "slice", "slice"]
    assert all(list(row) == list(PREDICTION_COLUMNS) for row in rows)
    assert [row["prob_covid"] for row in rows] == [0.8, 0.7, 0.7, None]
    assert not any(key.startswith("prob_") and key != "prob_covid" for row in rows for key in row)
    assert (rows[0]["study_key"], rows[1]["study_key"], rows[2]["slice_index"]) == (None, "ab12", 2)


def test_csv_rows_of_every_kind_leave_the_columns_they_do_not_have_empty(tmp_path):
    write_predictions([_run_with_an_image_a_study_and_a_flagged_slice()], tmp_path / "x.csv", per_slice=True)

    image, study, *_ = read_csv(tmp_path / "x.csv")
    assert (image["kind"], image["study_key"], image["n_slices_used"]) == ("image", "", "")
    assert (study["kind"], study["prob_covid"], study["n_slices_used"], study["slice"]) == (
        "study",
        "0.7",
        "1",
        "",
    )


def test_a_prediction_file_must_be_csv_or_json(tmp_path):
    with pytest.raises(OptionError, match=r"^out must end in \.csv or \.json; got 'x\.txt'$") as caught:
        write_predictions([], tmp_path / "x.txt")

    assert caught.value.as_flags() == "--out must end in .csv or .json; got 'x.txt'"
    assert not (tmp_path / "x.txt").exists()
