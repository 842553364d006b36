"""PredictionFile: rows reach the disk batch by batch; the JSON keeps its one-document shape."""

from __future__ import annotations

import csv
import json

import pytest

from covidct.infer.result_files import PredictionFile
from covidct.io.failures import InputFailure

FIELDS = ["path", "prob_covid", "label"]
BATCHES = [
    ([{"path": "a.png", "prob_covid": 0.9, "label": "COVID"}, {"path": "b.png", "prob_covid": 0.1, "label": "non-COVID"}], []),
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
