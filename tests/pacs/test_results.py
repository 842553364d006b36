"""The result objects of one series: SR content, Secondary Capture pixels, validation, deterministic UIDs."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from pacs_series import write_series
from volumes import PATIENT_ATTRIBUTES

from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.pacs.capture import BANNER_PX, BANNER_RGB
from covidct.pacs.identity import ResultUids
from covidct.pacs.series import predict_series


def instances(series):
    return [(f"instance-{i:04d}", path.read_bytes()) for i, path in enumerate(series.files)]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, predictor, model_identity):
    series = write_series(tmp_path_factory.mktemp("ct") / "ct")
    return series, predict_series(
        predictor, instances(series), model_identity, source="series test", series_uid=series.series_uid
    )


def sr_items(report) -> dict[str, object]:
    """Concept name meaning -> value (number, text, code meaning, UID) of the report's root items."""
    values = {}
    for item in report.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        kind = item.ValueType
        if kind == "NUM":
            values[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif kind in ("TEXT", "UIDREF"):
            values[name] = item.TextValue if kind == "TEXT" else item.UID
        elif kind == "CODE":
            values[name] = item.ConceptCodeSequence[0].CodeMeaning
        elif kind == "IMAGE":
            values[name] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return values


def test_the_report_carries_the_study_answer_and_the_model(outcome, model_identity):
    series, result = outcome
    report, capture = result.objects
    items = sr_items(report)

    assert report.StudyInstanceUID == capture.StudyInstanceUID == series.study_uid
    assert report.SeriesInstanceUID not in (series.series_uid, capture.SeriesInstanceUID)
    assert items["Probability of COVID-19 pattern"] == pytest.approx(result.study.prob_covid, abs=1e-6)
    assert items["Decision threshold"] == pytest.approx(result.study.threshold, abs=1e-6)
    assert items["Finding"] == ("COVID-19" if result.study.label == "COVID" else result.study.label)
    assert items["Lung slices used"] == result.study.n_slices_used == 6
    assert items["Slices in series"] == 10
    assert items["Model card SHA-256"] == model_identity.card_sha256
    assert items["Algorithm Version"] == "test"
    assert items["Out-of-distribution guard outcome"].startswith("passed: 0 of 6 lung slices flagged")
    assert items["Intended use"] == RESEARCH_USE_STATEMENT
    assert items["Most suspicious slice"] in _instance_uids(series)
    assert report.PatientID == PATIENT_ATTRIBUTES["PatientID"]  # results must file under the same patient


def _instance_uids(series) -> set[str]:
    from pydicom import dcmread

    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in series.files}


def test_the_capture_burns_the_warning_into_the_pixels_above_the_overlay(outcome):
    _, result = outcome
    pixels = result.objects[1].pixel_array

    assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
    banner = pixels[:BANNER_PX]
    is_red = np.all(banner == BANNER_RGB, axis=2)
    is_white = np.all(banner > 200, axis=2)
    assert is_red.mean() > 0.5 and is_white.sum() > 200  # letters on the red band
    overlay = pixels[BANNER_PX : BANNER_PX + 256].astype(int)
    assert np.abs(overlay[..., 0] - overlay[..., 2]).max() > 50  # the heatmap's colours, not a gray slice
    assert result.objects[1].BurnedInAnnotation == "YES"


def test_result_uids_follow_the_series_and_the_model(model_identity):
    first, again, other = (ResultUids.for_series(uid, model_identity) for uid in ("1.2.3", "1.2.3", "1.2.4"))

    assert first == again and first != other
    assert len({first.sr_series, first.sr_instance, first.sc_series, first.sc_instance}) == 4


@pytest.mark.parametrize(
    ("modality", "lung_slices", "reason"),
    [("MR", range(2, 8), "modality is MR"), ("CT", (), "none of its 10 slices shows lung")],
    ids=["not-ct", "no-lung"],
)
def test_a_series_that_is_not_a_chest_ct_gets_a_reason_and_no_objects(
    tmp_path, predictor, model_identity, modality, lung_slices, reason
):
    series = write_series(tmp_path / "s", modality=modality, lung_slices=lung_slices)

    result = predict_series(
        predictor, instances(series), model_identity, source="series x", series_uid=series.series_uid
    )

    assert result.objects == [] and reason in result.reason


def test_an_undecodable_series_gets_a_reason(tmp_path, predictor, model_identity):
    series = write_series(tmp_path / "s")
    broken = [(name, data[: len(data) // 2]) for name, data in instances(series)]

    result = predict_series(
        predictor, broken, model_identity, source="series x", series_uid=series.series_uid
    )

    # every instance is broken: the first in slice order (not necessarily in upload order) is named
    assert result.objects == [] and re.match(r"instance-\d{4}: cannot decode pixel data", result.reason)


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy is not installed (apt-get install dicom3tools)"
)
def test_report_and_capture_validate_with_dciodvfy(outcome, tmp_path):
    for dataset in outcome[1].objects:
        path = tmp_path / f"{dataset.Modality}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        answer = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (answer.stdout + answer.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], "\n".join(errors)
