"""Studies through the API: a DICOM series or a NIfTI volume gets one answer, and no
patient attribute leaks."""

from __future__ import annotations

import copy
import dataclasses
import logging
import re

import pytest
from pydicom import dcmread
from server_forms import upload
from volumes import PATIENT_ATTRIBUTES, chest_phantom, write_dicom_series, write_nifti

from covidct.io.volume import privacy_key

LUNG_SLICES = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory):
    """Six 64 x 64 CT slices in DICOM, lungs on four, carrying made-up patient attributes."""
    return write_dicom_series(tmp_path_factory.mktemp("series"), chest_phantom(6, 64, LUNG_SLICES))


def _files(paths):
    return upload(*[(path.name, path.read_bytes()) for path in paths])


def test_a_dicom_series_gets_one_study_answer(make_client, predictor, dicom_series):
    permissive = copy.copy(predictor)
    permissive.detector = dataclasses.replace(
        predictor.detector, threshold=float("inf")
    )  # the guard flags no phantom slice

    response = make_client(served=permissive).post("/api/v1/predict?cam=true", files=_files(dicom_series))

    answer = response.json()
    study_uid = dcmread(dicom_series[0]).StudyInstanceUID
    assert response.status_code == 200
    assert (answer["is_study"], answer["n_slices_total"], answer["study_key"]) == (
        True,
        6,
        privacy_key(study_uid),
    )
    assert len(answer["slices"]) == len(LUNG_SLICES)  # only lung slices are scored
    assert answer["threshold"] == predictor.threshold
    assert answer["in_distribution"] and answer["overlay_png"]
    assert answer["cam_slice"] == max(answer["slices"], key=lambda s: s["prob_covid"])["name"]


def test_the_api_answers_a_study_as_predict_volume_does(client, predictor, dicom_series):
    from covidct.io.readers import read_upload

    volume = read_upload([(path.name, path.read_bytes()) for path in dicom_series]).volumes[0]
    expected = predictor.predict_volume(volume)

    answer = client.post("/api/v1/predict", files=_files(dicom_series)).json()

    assert answer["prob_covid"] == pytest.approx(expected.prob_covid, abs=1e-6)
    assert (answer["label"], answer["aggregate"], answer["n_slices_used"]) == (
        expected.label,
        expected.aggregate,
        expected.n_slices_used,
    )


def test_a_nifti_volume_gets_one_study_answer(client, tmp_path):
    path = write_nifti(tmp_path / "chest.nii.gz", chest_phantom(6, 64, LUNG_SLICES))

    answer = client.post("/api/v1/predict", files=upload((path.name, path.read_bytes()))).json()

    assert (answer["is_study"], answer["n_slices_total"], len(answer["slices"])) == (
        True,
        6,
        len(LUNG_SLICES),
    )


def test_no_patient_attribute_reaches_the_response_or_the_logs(client, dicom_series, caplog):
    uids = {dcmread(dicom_series[0]).StudyInstanceUID, dcmread(dicom_series[0]).SeriesInstanceUID}

    with caplog.at_level(logging.DEBUG):
        response = client.post("/api/v1/predict?cam=true", files=_files(dicom_series))

    for secret in [*PATIENT_ATTRIBUTES.values(), "Doe", *uids]:
        assert secret not in response.text
        assert secret not in caplog.text


def test_several_series_in_one_request_are_refused(client, dicom_series, tmp_path):
    other = write_dicom_series(tmp_path / "other", chest_phantom(5, 64, [2], seed=1), seed=1)

    response = client.post("/api/v1/predict", files=_files([*dicom_series, *other]))

    assert response.status_code == 422
    assert re.match(
        r"^the upload holds 2 studies or series: .+ \(6 slices\); "
        r".+ \(5 slices\); send the files of one series per request$",
        response.json()["detail"],
    )


def test_a_series_without_lung_is_a_422_naming_it(client, tmp_path):
    paths = write_dicom_series(tmp_path / "head", chest_phantom(3, 64, []))

    response = client.post("/api/v1/predict", files=_files(paths))

    assert response.status_code == 422
    assert re.search(
        r": none of its 3 slices shows lung .* expected a chest CT series through the lungs",
        response.json()["detail"],
    )
