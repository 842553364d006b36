"""The most suspicious slice under its Grad-CAM overlay as a DICOM Secondary Capture, a warning burned in.

A viewer shows pixels, not attributes: the research-use warning is drawn into the image itself, above
the overlay, so it cannot be lost by a viewer that hides overlays or descriptions.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from covidct.infer.overlay import render_overlay
from covidct.infer.study import StudyPrediction
from covidct.pacs.identity import SC_SERIES_NUMBER, ResultUids
from covidct.pacs.report import MANUFACTURER

BANNER = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
BANNER_PX = 24
BANNER_RGB = (160, 0, 0)


def overlay_with_banner(study: StudyPrediction) -> np.ndarray:
    """(H, W, 3) uint8 RGB: ``BANNER`` in white on red above the Grad-CAM overlay of the top slice.

    Raises:
        ValueError: the study was predicted without ``explain`` (no heatmap).
    """
    if study.cam_heatmap is None or study.cam_slice is None:
        raise ValueError("the study has no Grad-CAM heatmap; predict it with explain=True")
    top = study.suspicious_slices[0]
    caption = f"series {study.label} P={study.prob_covid:.3f}; slice {top.index}"
    overlay = render_overlay(study.cam_slice, study.cam_heatmap, caption)
    font = ImageFont.load_default(size=BANNER_PX - 8)
    width = max(overlay.width, int(ImageDraw.Draw(overlay).textlength(BANNER, font=font)) + 8)
    canvas = Image.new("RGB", (width, overlay.height + BANNER_PX), "black")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width - 1, BANNER_PX - 1), fill=BANNER_RGB)
    draw.text((4, 4), BANNER, fill="white", font=font)
    canvas.paste(overlay, (0, BANNER_PX))
    return np.asarray(canvas, dtype=np.uint8)


def secondary_capture(
    study: StudyPrediction, source: Dataset, uids: ResultUids, *, covidct_version: str
) -> hd.sc.SCImage:
    """The Secondary Capture of ``overlay_with_banner(study)`` in the study of ``source`` (a header)."""
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay_with_banner(study),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description="covidct Grad-CAM - RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
        software_versions=covidct_version,
    )
    capture.BurnedInAnnotation = "YES"  # General Image module (PS3.3 C.7.6.1): text is drawn into the pixels
    capture.Laterality = ""  # General Series, type 2C (PS3.3 C.7.3.1): the chest is not a paired structure
    return capture
