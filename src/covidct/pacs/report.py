"""The study's answer as a DICOM Comprehensive SR (highdicom), stored into the study it was computed from.

The content tree is one container, "Imaging Measurement Report" (DCM 126000), with the device observer
context (TID 1004: covidct, its version and the model card's hash) and one item per fact a reader needs
to weigh the answer: the COVID probability, the label at the threshold, the threshold, slices used,
the out-of-distribution guard's outcome, the aggregation rule, the most suspicious slice and the
research-use statement. Concepts without a standard code use the private scheme ``99COVIDCT``.
Not TID 1500 itself: its measurement groups expect a tracked region or volume, and this answer is
about the whole series.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from covidct.infer.study import StudyPrediction
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.card import ModelCard
from covidct.pacs.identity import SR_SERIES_NUMBER, ModelIdentity, ResultUids

MANUFACTURER = "covidct (research software)"
_SCHEME = "99COVIDCT"
REPORT_TITLE = Code("126000", "DCM", "Imaging Measurement Report")
PROBABILITY = Code("PROB-COVID", _SCHEME, "Probability of COVID-19 pattern")
THRESHOLD = Code("THRESHOLD", _SCHEME, "Decision threshold")
SLICES_USED = Code("SLICES-USED", _SCHEME, "Lung slices used")
SLICES_TOTAL = Code("SLICES-TOTAL", _SCHEME, "Slices in series")
OOD_OUTCOME = Code("OOD-OUTCOME", _SCHEME, "Out-of-distribution guard outcome")
AGGREGATION = Code("AGGREGATION", _SCHEME, "Study aggregation rule")
CARD_HASH = Code("CARD-SHA256", _SCHEME, "Model card SHA-256")
WEIGHTS_HASH = Code("WEIGHTS-SHA256", _SCHEME, "Model weights SHA-256")
INTENDED_USE = Code("INTENDED-USE", _SCHEME, "Intended use")
SUSPICIOUS_SLICE = Code("SUSPICIOUS-SLICE", _SCHEME, "Most suspicious slice")
FINDING = Code("121071", "DCM", "Finding")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
PRIVATE_SCHEME = CodingSchemeIdentificationItem(
    _SCHEME, name="covidct research concepts", responsible_organization="covidct"
)
NO_UNITS = Code("1", "UCUM", "no units")
SLICES_UNIT = Code("{slices}", "UCUM", "slices")


def label_code(label: str, card: ModelCard) -> Code:
    """The finding's code: SNOMED CT "COVID-19" (840539006) for the positive class, else a private code."""
    if label == card.positive_class:
        return Code("840539006", "SCT", "COVID-19")
    return Code(label.upper()[:16], _SCHEME, label)


def ood_outcome(study: StudyPrediction) -> str:
    """One sentence: did the guard pass the series, and how many slices it left out."""
    flagged = sum(not s.in_distribution for s in study.slices)
    score = "" if study.ood_score is None else f" (median OOD score {study.ood_score:.2f})"
    if study.ood_score is None and flagged == 0:
        return "no out-of-distribution guard in this model"
    return f"passed: {flagged} of {len(study.slices)} lung slices flagged and left out{score}"


def structured_report(
    study: StudyPrediction,
    evidence: list[Dataset],
    suspicious: Dataset | None,
    card: ModelCard,
    model: ModelIdentity,
    uids: ResultUids,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR for one predicted series (patient and study attributes copied from ``evidence``).

    Args:
        study: the series' prediction, with a probability (a ``not-ct`` study gets no report).
        evidence: header datasets of the series' instances (pixel data not needed); all are referenced.
        suspicious: the header of the most suspicious slice's instance, referenced as an image, or None.
    """
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.sr_series,
            name="covidct",
            manufacturer_name=MANUFACTURER,
            model_name=f"covidct {model.covidct_version}",
        ),
    )
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = [
        hd.sr.TextContentItem(ALGORITHM_NAME, "covidct", relationship_type=contains),
        hd.sr.TextContentItem(ALGORITHM_VERSION, model.covidct_version, relationship_type=contains),
        hd.sr.TextContentItem(CARD_HASH, model.card_sha256, relationship_type=contains),
        hd.sr.TextContentItem(WEIGHTS_HASH, model.checkpoint_sha256 or "unknown", relationship_type=contains),
        hd.sr.NumContentItem(PROBABILITY, round(study.prob_covid, 6), NO_UNITS, relationship_type=contains),
        hd.sr.CodeContentItem(FINDING, label_code(study.label, card), relationship_type=contains),
        hd.sr.NumContentItem(THRESHOLD, round(study.threshold, 6), NO_UNITS, relationship_type=contains),
        hd.sr.NumContentItem(SLICES_USED, study.n_slices_used, SLICES_UNIT, relationship_type=contains),
        hd.sr.NumContentItem(SLICES_TOTAL, study.n_slices_total, SLICES_UNIT, relationship_type=contains),
        hd.sr.TextContentItem(OOD_OUTCOME, ood_outcome(study), relationship_type=contains),
        hd.sr.TextContentItem(AGGREGATION, study.aggregate, relationship_type=contains),
        hd.sr.TextContentItem(INTENDED_USE, RESEARCH_USE_STATEMENT, relationship_type=contains),
    ]
    if suspicious is not None:
        items.append(
            hd.sr.ImageContentItem(
                SUSPICIOUS_SLICE,
                suspicious.SOPClassUID,
                suspicious.SOPInstanceUID,
                relationship_type=contains,
            )
        )
    root = hd.sr.ContainerContentItem(REPORT_TITLE)
    root.ContentSequence = [*observer, *items]
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="covidct COVID-19 report - RESEARCH USE ONLY",
        manufacturer_model_name="covidct",
        software_versions=model.covidct_version,
        coding_schemes=[PRIVATE_SCHEME],
    )
