"""``POST /api/v1/predict``: one image, or the files of one study, in a multipart upload."""

from __future__ import annotations

import dataclasses
import functools

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from covidct.errors import InputError
from covidct.io.budget import VoxelBudget
from covidct.io.readers import Upload
from covidct.server.answers import (
    images_study,
    slice_answer,
    study_answer,
)
from covidct.server.decoding import decode_upload
from covidct.server.inference import InferencePool
from covidct.server.schemas import ErrorDetail, PredictResponse, UploadForm
from covidct.server.uploads import check_declared_size, read_files

router = APIRouter()

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": UploadForm.model_json_schema()}},
    }
}
_ERRORS = {
    401: {"model": ErrorDetail, "description": "Missing or wrong API key."},
    408: {
        "model": ErrorDetail,
        "description": "The upload took longer to arrive than the body-read timeout.",
    },
    413: {"model": ErrorDetail, "description": "Over the size, file-count, pixel or decoded-voxel limit."},
    415: {
        "model": ErrorDetail,
        "description": "Not multipart/form-data, or a file type covidct does not read.",
    },
    422: {
        "model": ErrorDetail,
        "description": (
            "A file that cannot be decoded, several studies in one request, or a malformed request."
        ),
    },
    503: {
        "model": ErrorDetail,
        "description": "Every worker is busy, or requests in flight hold the decoding budget; retry later.",
    },
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    tags=["predict"],
)
async def predict(
    request: Request,
    cam: bool = Query(False, description="Add the Grad-CAM overlay and its slice as base64 PNGs (slower)."),
) -> PredictResponse:
    """COVID-19 probability for one chest CT slice, or a study-level answer for the files of one study.

    Files that cannot be used are listed in ``failures`` while the others are predicted; when none
    can be used, the request fails with the first file's reason (413, 415 or 422).
    """
    settings, pool = request.app.state.settings, request.app.state.pool
    check_declared_size(request.headers.get("content-length"), max_bytes=settings.max_upload_bytes)
    files = await read_files(
        request.headers.get("content-type", ""),
        request.stream(),
        max_bytes=settings.max_upload_bytes,
        max_files=settings.max_files,
        timeout_s=settings.body_timeout_s,
    )
    # The decoded arrays live until the answer is built: so do their voxels in the budget.
    with VoxelBudget(settings.max_request_voxels, pool=request.app.state.voxel_pool) as budget:
        decoded = await run_in_threadpool(decode_upload, files, max_pixels=settings.max_pixels, budget=budget)
        del files  # the raw bytes are not needed past decoding, while inference may take a while
        _check_one_study(decoded.upload, decoded.errors)
        if decoded.upload.volumes:
            predict_volume = functools.partial(
                request.app.state.predictor.predict_volume, decoded.upload.volumes[0], explain=cam
            )
            return study_answer(await pool.run(predict_volume), decoded.errors)
        return await _answer_images(pool, decoded.upload, decoded.errors, cam=cam)


def _check_one_study(upload: Upload, errors: list[InputError]) -> None:
    """Raise the first file's error when nothing could be used, or a 422 when the
    files hold several studies."""
    if not upload.images and not upload.volumes:
        raise errors[0]
    if len(upload.volumes) > 1 or (upload.volumes and upload.images):
        parts = [f"{volume.source} ({volume.n_slices} slices)" for volume in upload.volumes] + (
            [f"{len(upload.images)} 2-D image(s)"] if upload.images else []
        )
        raise InputError(
            f"the upload holds {len(parts)} studies or series: "
            f"{'; '.join(parts)}; send the files of one series per request"
        )


async def _answer_images(
    pool: InferencePool, upload: Upload, errors: list[InputError], *, cam: bool
) -> PredictResponse:
    names = [name for name, _ in upload.images]
    slices = [gray for _, gray in upload.images]
    card = pool.predictor.card
    if len(names) == 1:
        return slice_answer((await pool.predict(names, slices, explain=cam))[0], errors, card)
    study = images_study(names, await pool.predict(names, slices), card)
    if (
        cam
    ):  # Grad-CAM costs a backward pass per slice: a study's overlay is of its most suspicious slice only
        shown = study.suspicious_slices[0].index if study.suspicious_slices else 0
        explained = (await pool.predict([names[shown]], [slices[shown]], explain=True))[0]
        study = dataclasses.replace(study, cam_slice=explained.slice, cam_heatmap=explained.heatmap)
    return study_answer(study, errors)
