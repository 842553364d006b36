"""Read results back from the test Orthanc over DICOMweb: the series of a study and their instances."""

from __future__ import annotations

from dicomweb_client.api import DICOMwebClient
from orthanc import PASSWORD, USER, Orthanc
from pydicom.dataset import Dataset

from covidct.pacs.auth import Credentials


def client(orthanc: Orthanc) -> DICOMwebClient:
    return DICOMwebClient(orthanc.dicomweb_url, session=Credentials(user=USER, password=PASSWORD).session())


def study_series(orthanc: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    """Modality -> the instances (full datasets) of every series of that modality in the study."""
    web = client(orthanc)
    found: dict[str, list[Dataset]] = {}
    for series in web.search_for_series(study_uid):
        modality = series["00080060"]["Value"][0]
        found.setdefault(modality, []).extend(web.retrieve_series(study_uid, series["0020000E"]["Value"][0]))
    return found


def modality_counts(orthanc: Orthanc, study_uid: str) -> dict[str, int]:
    """Modality -> number of instances of that modality in the study (every series together)."""
    web = client(orthanc)
    counts: dict[str, int] = {}
    for series in web.search_for_series(study_uid):
        modality = series["00080060"]["Value"][0]
        counts[modality] = counts.get(modality, 0) + len(
            web.search_for_instances(study_uid, series["0020000E"]["Value"][0])
        )
    return counts
