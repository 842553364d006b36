"""The persisted record of processed series: survives a restart, backs off retries, refuses a foreign file."""

from __future__ import annotations

import json
import time

import pytest

from covidct.errors import InputError
from covidct.pacs.state import BACKOFF_BASE_S, BACKOFF_MAX_S, ProcessedSeries, SeriesStatus


def test_outcomes_survive_a_restart_and_done_series_are_not_due(tmp_path):
    state = ProcessedSeries(tmp_path / "state.json")
    state.mark("a", SeriesStatus.DONE, summary="COVID P=0.9")
    state.mark("b", SeriesStatus.SKIPPED, reason="modality is MR")

    again = ProcessedSeries(tmp_path / "state.json")

    assert again.get("a").summary == "COVID P=0.9" and again.get("b").reason == "modality is MR"
    assert not again.is_due("a") and not again.is_due("b") and again.is_due("never seen")
    assert again.counts() == {"done": 1, "skipped": 1, "retry": 0}


def test_retries_back_off_exponentially_up_to_the_cap(tmp_path):
    state = ProcessedSeries(tmp_path / "state.json")

    waits = [
        round(state.mark("a", SeriesStatus.RETRY, reason="HTTP 503").next_attempt_at - time.time())
        for _ in range(12)
    ]

    assert (
        waits[:3] == [BACKOFF_BASE_S, 2 * BACKOFF_BASE_S, 4 * BACKOFF_BASE_S] and waits[-1] == BACKOFF_MAX_S
    )
    assert state.get("a").attempts == 12 and not state.is_due("a")
    assert state.is_due("a", now=state.get("a").next_attempt_at)


def test_the_file_is_replaced_whole_and_leaves_no_temporary_files(tmp_path):
    state = ProcessedSeries(tmp_path / "state.json")
    for key in "abc":
        state.mark(key, SeriesStatus.DONE)

    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert set(json.loads((tmp_path / "state.json").read_text())["series"]) == {"a", "b", "c"}


def test_a_file_that_is_not_a_state_file_is_a_clear_error(tmp_path):
    (tmp_path / "state.json").write_text("{not json")

    with pytest.raises(InputError, match=r"state.json: not a covidct pacs state file .*move it away"):
        ProcessedSeries(tmp_path / "state.json")
