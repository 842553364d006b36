"""``covidct pacs watch`` against a real Orthanc: results in the same study, none for non-chest CT, once."""

from __future__ import annotations

import numpy as np
import pytest
import typer.testing
from orthanc import PASSWORD, USER, start_orthanc, upload
from pacs_series import write_series
from readback import modality_counts, study_series
from test_results import sr_items
from typer.testing import CliRunner
from volumes import PATIENT_ATTRIBUTES, TRAINING_LIKE_WINDOW

from covidct.cli.app import app
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.io.volume import privacy_key
from covidct.pacs import state as state_module
from covidct.pacs.auth import Credentials
from covidct.pacs.capture import BANNER_PX, BANNER_RGB
from covidct.pacs.dicomweb import DicomWebPacs
from covidct.pacs.state import ProcessedSeries, SeriesStatus
from covidct.pacs.watch import WatchOptions, watch


@pytest.fixture
def uploaded(orthanc, tmp_path):
    """A chest CT, an MR and a CT without lung (a head series), each its own study, stored in Orthanc."""
    series = {
        "chest": write_series(tmp_path / "chest", seed=1),
        "mr": write_series(tmp_path / "mr", modality="MR", seed=2),
        "head": write_series(tmp_path / "head", lung_slices=(), seed=3),
    }
    upload(orthanc, [path for s in series.values() for path in s.files])
    return series


def run_watch(model_dir, orthanc, work_dir, auth_file) -> typer.testing.Result:
    args = [
        "pacs",
        "watch",
        model_dir,
        "--dicomweb",
        orthanc.dicomweb_url,
        "--once",
        "--basic-auth-file",
        auth_file,
        "--work-dir",
        work_dir,
        "--window",
        str(TRAINING_LIKE_WINDOW),
    ]
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "250"})


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "auth"
    path.write_text(f"{USER}:{PASSWORD}\n")
    return path


def test_watch_stores_a_report_and_a_capture_into_the_same_study(
    tiny_model_dir, orthanc, uploaded, auth_file, tmp_path
):
    result = run_watch(tiny_model_dir, orthanc, tmp_path / "work", auth_file)

    assert result.exit_code == 0, result.output
    chest = study_series(orthanc, uploaded["chest"].study_uid)
    assert sorted((modality, len(instances)) for modality, instances in chest.items()) == [
        ("CT", 10),
        ("OT", 1),
        ("SR", 1),
    ]
    report, capture = chest["SR"][0], chest["OT"][0]
    assert report.StudyInstanceUID == capture.StudyInstanceUID == uploaded["chest"].study_uid
    assert report.SeriesInstanceUID != capture.SeriesInstanceUID
    assert uploaded["chest"].series_uid not in (report.SeriesInstanceUID, capture.SeriesInstanceUID)
    items = sr_items(report)
    assert 0.0 <= items["Probability of COVID-19 pattern"] <= 1.0 and items["Lung slices used"] == 6
    assert items["Intended use"] == RESEARCH_USE_STATEMENT
    assert np.all(capture.pixel_array[:BANNER_PX, :4] == BANNER_RGB)
    assert modality_counts(orthanc, uploaded["mr"].study_uid) == {"MR": 10}
    assert modality_counts(orthanc, uploaded["head"].study_uid) == {"CT": 10}
    output = " ".join(result.output.split())
    assert (
        "1 done, 1 skipped" in output and "shows lung" in output and "SR + Secondary Capture stored" in output
    )


def test_logs_carry_hashed_keys_only(tiny_model_dir, orthanc, uploaded, auth_file, tmp_path):
    result = run_watch(tiny_model_dir, orthanc, tmp_path / "work", auth_file)

    state_text = (tmp_path / "work" / "watch-state.json").read_text()
    for secret in [
        *PATIENT_ATTRIBUTES.values(),
        *(s.study_uid for s in uploaded.values()),
        *(s.series_uid for s in uploaded.values()),
    ]:
        assert secret not in result.output and secret not in state_text


def test_each_series_is_processed_once_across_restarts(
    tiny_model_dir, orthanc, uploaded, auth_file, tmp_path
):
    run_watch(tiny_model_dir, orthanc, tmp_path / "work", auth_file)
    again = run_watch(tiny_model_dir, orthanc, tmp_path / "work", auth_file)
    # A crash after storing but before recording it: the state does not know, the PACS does.
    (tmp_path / "work" / "watch-state.json").unlink()
    after_crash = run_watch(tiny_model_dir, orthanc, tmp_path / "work", auth_file)

    assert "0 done, 0 skipped" in again.output
    assert "results already in the PACS" in " ".join(after_crash.output.split())
    assert modality_counts(orthanc, uploaded["chest"].study_uid) == {"CT": 10, "SR": 1, "OT": 1}


def test_an_outage_while_storing_is_retried_and_loses_nothing(
    predictor, model_identity, orthanc, tmp_path, monkeypatch
):
    chest = write_series(tmp_path / "chest", seed=1)
    upload(orthanc, chest.files)
    monkeypatch.setattr(state_module, "BACKOFF_BASE_S", 0.0)
    credentials = Credentials(user=USER, password=PASSWORD)
    pacs = DicomWebPacs(orthanc.dicomweb_url, credentials=credentials)
    state = ProcessedSeries(tmp_path / "state.json")
    real_store = pacs.store

    def store_while_the_pacs_goes_down(series, objects):
        orthanc.stop()
        real_store(series, objects)

    monkeypatch.setattr(pacs, "store", store_while_the_pacs_goes_down)
    first = watch(predictor, pacs, state, model_identity, WatchOptions(days=1, once=True))
    restarted = start_orthanc(tmp_path / "orthanc")  # same storage folder, new ports
    try:
        second = watch(
            predictor,
            DicomWebPacs(restarted.dicomweb_url, credentials=credentials),
            state,
            model_identity,
            WatchOptions(days=1, once=True),
        )
        counts = modality_counts(restarted, chest.study_uid)
    finally:
        restarted.stop()

    assert first == {"done": 0, "skipped": 0, "retry": 1} and second == {"done": 1, "skipped": 0, "retry": 0}
    record = state.get(privacy_key(chest.series_uid))
    assert record.status is SeriesStatus.DONE and record.attempts == 2
    assert counts == {"CT": 10, "SR": 1, "OT": 1}


def test_an_unreachable_pacs_is_reported_and_nothing_is_recorded(predictor, model_identity, tmp_path):
    pacs = DicomWebPacs("http://127.0.0.1:9/dicom-web", timeout_s=5)
    state = ProcessedSeries(tmp_path / "state.json")

    counts = watch(predictor, pacs, state, model_identity, WatchOptions(once=True))

    assert counts == {"done": 0, "skipped": 0, "retry": 0} and state.counts() == counts
