"""The DICOMweb side of ``pacs watch``: QIDO-RS finds CT series, WADO-RS fetches one, STOW-RS stores results.

Every network or server failure surfaces as ``PacsUnavailable``, which the watcher retries with
back-off; a series over the memory budget is an ``InputError``, which it records and skips.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from covidct.errors import CovidctError, InputError
from covidct.io.volume import privacy_key
from covidct.pacs.auth import Credentials
from covidct.pacs.identity import ResultUids
from covidct.pacs.series import Instance

_STUDY_UID, _SERIES_UID = "0020000D", "0020000E"


class PacsUnavailable(CovidctError):
    """The PACS did not answer, or answered with an error: try again later."""


@dataclass(frozen=True)
class SeriesRef:
    """A series found by QIDO-RS: its UIDs (never logged)."""

    study_uid: str
    series_uid: str

    @property
    def key(self) -> str:
        """The series' ``privacy_key``: what logs and the state file call it."""
        return privacy_key(self.series_uid)


class DicomWebPacs:
    """A DICOMweb server (e.g. Orthanc's DICOMweb plugin at ``http://host:8042/dicom-web``)."""

    def __init__(self, url: str, *, credentials: Credentials | None = None, timeout_s: float = 60.0) -> None:
        session = (credentials or Credentials()).session()
        self.client = DICOMwebClient(url, session=session)
        self.client.set_http_retry_params(retry=False)  # the watcher retries, with its own back-off
        self.timeout_s = timeout_s
        session.request = _with_timeout(session.request, timeout_s)

    def ct_series(
        self, *, days: int, filters: Mapping[str, str] | None = None, today: dt.date | None = None
    ) -> list[SeriesRef]:
        """CT series of studies dated within the last ``days`` days (0: any date) that match ``filters``.

        Raises:
            PacsUnavailable: the server did not answer or refused the query.
        """
        search = {"Modality": "CT", **(filters or {})}
        if days > 0:
            today = today or dt.date.today()
            search["StudyDate"] = f"{today - dt.timedelta(days=days):%Y%m%d}-{today:%Y%m%d}"
        answers = self._call(
            self.client.search_for_series,
            search_filters=search,
            get_remaining=True,
        )
        return [
            SeriesRef(_value(a, _STUDY_UID), _value(a, _SERIES_UID))
            for a in answers
            if _value(a, _SERIES_UID)
        ]

    def retrieve(self, series: SeriesRef, *, max_bytes: int) -> list[Instance]:
        """The series' instances as Part-10 bytes (``instance-0000``...), refused past ``max_bytes``.

        Raises:
            InputError: the series is over ``max_bytes``.
            PacsUnavailable: the server did not answer or failed mid-transfer.
        """
        instances, total = [], 0
        datasets = self._call(self.client.iter_series, series.study_uid, series.series_uid)
        for dataset in _guarded(datasets):
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            total += buffer.tell()
            if total > max_bytes:
                raise InputError(
                    f"over the {max_bytes / 2**20:.0f} MiB budget after {len(instances)} instances;"
                    " raise --max-series-mb to accept it",
                    path=f"series {series.key}",
                )
            instances.append((f"instance-{len(instances):04d}", buffer.getvalue()))
        return instances

    def has_results(self, series: SeriesRef, uids: ResultUids) -> bool:
        """True when both result instances of this model for this series are already in the study."""
        for series_uid, instance_uid in (
            (uids.sr_series, uids.sr_instance),
            (uids.sc_series, uids.sc_instance),
        ):
            found = self._call(
                self.client.search_for_instances,
                series.study_uid,
                series_uid,
                search_filters={"SOPInstanceUID": instance_uid},
            )
            if not found:
                return False
        return True

    def store(self, series: SeriesRef, objects: Sequence[Dataset]) -> None:
        """STOW-RS ``objects`` into the series' study, all in one request (so a crash stores all or none).

        Raises:
            PacsUnavailable: the server did not answer, or refused some instance (its reason is given).
        """
        answer = self._call(self.client.store_instances, list(objects), study_instance_uid=series.study_uid)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = ", ".join(f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed)
            raise PacsUnavailable(
                f"the PACS refused {len(failed)} of {len(objects)} result objects (failure reasons {reasons})"
            )

    def _call(self, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except requests.RequestException as error:
            raise PacsUnavailable(_describe(error)) from None


def _guarded(datasets):
    """Iterate a streamed retrieval, turning a transfer failure into ``PacsUnavailable``."""
    try:
        yield from datasets
    except requests.RequestException as error:
        raise PacsUnavailable(_describe(error)) from None


def _describe(error: requests.RequestException) -> str:
    response = getattr(error, "response", None)
    if response is not None:
        return f"the PACS answered HTTP {response.status_code} {response.reason}"
    return f"the PACS did not answer ({type(error).__name__})"


def _with_timeout(request, timeout_s: float):
    def request_with_timeout(method, url, **kwargs):
        kwargs.setdefault("timeout", timeout_s)
        return request(method, url, **kwargs)

    return request_with_timeout


def _value(answer: dict, tag: str) -> str:
    values = answer.get(tag, {}).get("Value") or [""]
    return str(values[0])
