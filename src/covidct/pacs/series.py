"""One received CT series -> its result objects (SR + Secondary Capture), or the reason it gets none.

The same study path as ``covidct predict`` (``Predictor.predict_volume``: lung slices, the
out-of-distribution guard, the card's aggregation rule), so a series answered through the PACS gets
the answer its files would get on the command line. Shared by ``watch`` (DICOMweb) and ``listen``
(DICOM C-STORE).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset

from covidct.errors import InputError
from covidct.infer.predictor import Predictor
from covidct.infer.study import StudyPrediction
from covidct.io.dicom import read_dicom_series
from covidct.model.ood import NOT_CT_LABEL
from covidct.pacs.capture import secondary_capture
from covidct.pacs.identity import ModelIdentity, ResultUids
from covidct.pacs.report import structured_report

# Patient and General Study attributes of type 2 (PS3.3 C.7.1.1, C.7.2.1): in a conformant CT image, and
# copied into the results, which need them present; a source that lacks one gives the results an empty value.
_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)

Instance = tuple[str, bytes]  # (a name for messages, e.g. "instance-0007"; the Part-10 file's bytes)


@dataclass(frozen=True)
class SeriesOutcome:
    """What became of one series: the prediction and its result objects, or a reason and no objects.

    Attributes:
        study: the prediction, or None when the series could not be read or shows no lung.
        objects: the SR and the Secondary Capture to store, in that order; empty when ``reason`` is set.
        reason: empty, or why the series gets no result (not a CT, no lung, undecodable, not-ct guard).
    """

    study: StudyPrediction | None
    objects: list[Dataset] = field(default_factory=list)
    reason: str = ""

    def summary(self) -> str:
        """One log line (hashed keys only, never a UID or a patient attribute)."""
        if self.reason:
            return f"no result: {self.reason}"
        study = self.study
        return (
            f"{study.label} P(COVID) = {study.prob_covid:.3f} at threshold {study.threshold:.3f}, "
            f"{study.n_slices_used} of {study.n_slices_total} slices used ({study.aggregate})"
        )


def predict_series(
    predictor: Predictor, instances: Sequence[Instance], model: ModelIdentity, *, source: str, series_uid: str
) -> SeriesOutcome:
    """Read ``instances`` (one series) into a volume, predict it as a study, build SR and capture.

    A series that is not CT, does not decode, shows no lung or that the guard calls ``not-ct`` gets a
    reason and no objects: a report on something that is not a chest CT would mean nothing.

    Args:
        instances: the series' Part-10 files in memory.
        source: what to call the series in messages (hashed, e.g. "series 1a2b3c...").
        series_uid: its SeriesInstanceUID: the result UIDs are derived from it (``ResultUids``).
    """
    try:
        volume = read_dicom_series(instances, source=source, max_pixels=predictor.max_pixels)
        study = predictor.predict_volume(volume, explain=True)
    except InputError as error:
        return SeriesOutcome(None, reason=str(error))
    if study.label == NOT_CT_LABEL or study.prob_covid is None:
        return SeriesOutcome(study, reason=f"{source}: {study.message or 'not a chest CT'}")
    headers = {name: _header(data) for name, data in instances}
    suspicious = (
        headers.get(study.suspicious_slices[0].name.split("#")[0]) if study.suspicious_slices else None
    )
    uids = ResultUids.for_series(series_uid, model)
    evidence = list(headers.values())
    report = structured_report(study, evidence, suspicious, predictor.card, model, uids)
    capture = secondary_capture(study, suspicious or evidence[0], uids, covidct_version=model.covidct_version)
    return SeriesOutcome(study, [report, capture])


def _header(data: bytes) -> Dataset:
    """The instance's attributes without pixel data, with the type-2 patient and study attributes present."""
    header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    for keyword in _PATIENT_STUDY_TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header
