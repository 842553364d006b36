"""Predictor results -> the API's ``PredictResponse``: one slice's answer or one
study's, overlay as base64 PNG.

A study is a DICOM series or NIfTI volume (``Predictor.predict_volume``) or several 2-D slices
uploaded together; both are answered through ``infer.study``, so a set of PNGs is aggregated with
the same rule, guard and threshold as a DICOM series.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
from PIL import Image

from covidct.errors import InputError
from covidct.infer.overlay import overlay_caption, render_overlay
from covidct.infer.predictor import Explanation
from covidct.infer.study import StudyPrediction, study_prediction
from covidct.io.volume import StudyOrigin, privacy_key
from covidct.model.card import ModelCard
from covidct.png import gray_image, png_bytes
from covidct.server.schemas import PredictResponse, SliceResult, UploadFailure


def slice_answer(explanation: Explanation, errors: Sequence[InputError], card: ModelCard) -> PredictResponse:
    """The response for one uploaded image (with its overlay when ``explanation`` has a heatmap)."""
    p = explanation.prediction
    answer = PredictResponse(
        prob_covid=p.prob_covid,
        label=p.label,
        threshold=card.decision.threshold,
        in_distribution=p.in_distribution,
        ood_score=p.ood_score,
        message=p.message,
        is_study=False,
        slices=[
            SliceResult(
                name=p.path, prob_covid=p.prob_covid, in_distribution=p.in_distribution, ood_score=p.ood_score
            )
        ],
        failures=_failures(errors),
    )
    if explanation.heatmap is not None:
        _add_overlay(
            answer,
            p.path,
            explanation.slice,
            explanation.heatmap,
            overlay_caption(p.label, p.prob_covid, p.ood_score),
        )
    return answer


def study_answer(study: StudyPrediction, errors: Sequence[InputError]) -> PredictResponse:
    """The response for one study (with its most suspicious slice's overlay when ``study`` has one)."""
    slices = [
        SliceResult(
            name=s.name, prob_covid=s.prob_covid, in_distribution=s.in_distribution, ood_score=s.ood_score
        )
        for s in study.slices
    ]
    answer = PredictResponse(
        prob_covid=study.prob_covid,
        label=study.label,
        threshold=study.threshold,
        in_distribution=study.in_distribution,
        ood_score=study.ood_score,
        message=study.message,
        is_study=True,
        study_key=study.study_key,
        aggregate=study.aggregate,
        n_slices_total=study.n_slices_total,
        n_slices_used=study.n_slices_used,
        slices=slices,
        failures=_failures(errors),
    )
    if study.cam_heatmap is not None:
        shown = study.suspicious_slices[0].name if study.suspicious_slices else study.slices[0].name
        _add_overlay(
            answer, shown, study.cam_slice, study.cam_heatmap, overlay_caption(study.label, study.prob_covid)
        )
    return answer


def images_study(
    names: Sequence[str], explanations: Sequence[Explanation], card: ModelCard
) -> StudyPrediction:
    """Several uploaded 2-D slices as one study: ``infer.study``'s guard and aggregation
    over their predictions."""
    key = privacy_key("\n".join(names))
    origin = StudyOrigin(
        source=f"{names[0]} (+{len(names) - 1} slices)", study_key=key, series_key=key, n_slices=len(names)
    )
    return study_prediction(origin, range(len(names)), [e.prediction for e in explanations], card)


def _failures(errors: Sequence[InputError]) -> list[UploadFailure]:
    return [UploadFailure(name=error.path or "", reason=error.reason) for error in errors]


def _add_overlay(
    answer: PredictResponse, name: str, slice_gray: np.ndarray, heatmap: np.ndarray, caption: str
) -> None:
    answer.cam_slice = name
    answer.overlay_png = _png_base64(render_overlay(slice_gray, heatmap, caption))
    answer.slice_png = _png_base64(gray_image(slice_gray))


def _png_base64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")
