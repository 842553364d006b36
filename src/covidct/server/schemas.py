"""Request and response models of the REST API, so the OpenAPI schema at ``/docs`` is generated from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from covidct.intended_use import RESEARCH_USE_STATEMENT


class SliceResult(BaseModel):
    """The model's answer for one slice (an uploaded image, or one slice of a study)."""

    name: str = Field(
        description="The uploaded file name, or '<file>#<index>' for a slice of a multi-slice file."
    )
    prob_covid: float | None = Field(
        description="Calibrated probability of the positive class; null when the guard flagged the slice."
    )
    in_distribution: bool = Field(
        description="False when the out-of-distribution guard says the slice is not like a chest CT slice."
    )
    ood_score: float | None = Field(
        description="The guard's distance (larger is less CT-like); null for a model without a guard."
    )


class UploadFailure(BaseModel):
    """An uploaded file that gave no result; the other files were still predicted."""

    name: str
    reason: str


class PredictResponse(BaseModel):
    """The answer for one image, or a study-level answer for the files of one study."""

    prob_covid: float | None = Field(
        description="The image's (or study's) calibrated COVID probability; null when not a chest CT."
    )
    label: str
    threshold: float = Field(description="The model's decision threshold on prob_covid.")
    in_distribution: bool = Field(
        description="False when the out-of-distribution guard says this is not a chest CT slice (or study)."
    )
    ood_score: float | None = Field(
        description=(
            "The guard's distance (a study's median over its slices); null for a model without a guard."
        )
    )
    message: str = Field(
        description=(
            "Empty, or what the guard did (why there is no probability, or how many slices it left out)."
        )
    )
    is_study: bool = Field(
        description="True for a DICOM series, a NIfTI volume or several slices, combined into one answer."
    )
    study_key: str | None = Field(
        None,
        description="For a study: a hash of its StudyInstanceUID (never the UID or a patient attribute).",
    )
    aggregate: str | None = Field(None, description="For a study: how its slice probabilities were combined.")
    n_slices_total: int | None = Field(None, description="For a study: its slices.")
    n_slices_used: int | None = Field(None, description="For a study: the lung slices in its probability.")
    slices: list[SliceResult] = Field(
        description="Per-slice results: the image, or the study's scored (lung) slices in order."
    )
    failures: list[UploadFailure] = Field(description="Files that could not be used.")
    cam_slice: str | None = Field(
        None, description="The slice the overlay shows (the most suspicious one in a study)."
    )
    overlay_png: str | None = Field(
        None, description="Base64 PNG: the Grad-CAM heatmap over the slice (with ?cam=true)."
    )
    slice_png: str | None = Field(
        None, description="Base64 PNG: the slice as the model saw it (with ?cam=true)."
    )
    research_use: str = RESEARCH_USE_STATEMENT


class UploadForm(BaseModel):
    """The multipart/form-data body of ``POST /api/v1/predict``."""

    files: list[bytes] = Field(
        json_schema_extra={"items": {"type": "string", "format": "binary"}},
        description=(
            "One image (PNG, JPEG, BMP, TIFF, DICOM), or the "
            "files of one study (DICOM slices, a NIfTI, PNGs)."
        ),
    )


class ModelInfo(BaseModel):
    """The served model: what it predicts, how it decides, and its model card's public view."""

    classes: list[str]
    positive_class: str
    threshold: float
    image_size: int
    has_ood_guard: bool
    engine: str
    card: dict[str, Any] = Field(
        description="model.json as written by 'covidct train', without "
        "the training data's location, the paths of files "
        "it could not use (their count instead), the host's platform string or any other absolute path."
    )
    research_use: str = RESEARCH_USE_STATEMENT


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorDetail(BaseModel):
    """Every 4xx and 503 body: '<file name>: <reason>' (the same reason the CLI
    prints), or the reason alone."""

    detail: str
