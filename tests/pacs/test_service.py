"""One series handled and recorded: outages retry; bad input and bugs are skipped, without leaking PHI."""

from __future__ import annotations

import logging

import pytest

from covidct.errors import InputError
from covidct.pacs.dicomweb import PacsUnavailable
from covidct.pacs.service import SeriesJob, handle_series
from covidct.pacs.state import ProcessedSeries, SeriesStatus


def failing(error: Exception):
    def fetch():
        raise error

    return fetch


def never_called(objects):
    raise AssertionError("nothing should be stored")


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (PacsUnavailable("the PACS answered HTTP 503 Service Unavailable"), SeriesStatus.RETRY, "HTTP 503"),
        (InputError("over the 1 MiB budget", path="series k"), SeriesStatus.SKIPPED, "over the 1 MiB budget"),
        (KeyError("Doe^Jane"), SeriesStatus.SKIPPED, "unexpected KeyError at test_service.py:"),
    ],
    ids=["outage", "too-large", "bug"],
)
def test_each_failure_is_recorded_with_its_reason(
    tmp_path, caplog, predictor, model_identity, error, status, reason
):
    state = ProcessedSeries(tmp_path / "state.json")
    job = SeriesJob(key="k", series_uid="1.2.3", fetch=failing(error), store=never_called)

    with caplog.at_level(logging.INFO, logger="covidct.pacs"):
        assert handle_series(job, predictor, model_identity, state) is status

    assert reason in ProcessedSeries(tmp_path / "state.json").get("k").reason
    assert "series k" in caplog.text and "Doe^Jane" not in caplog.text
