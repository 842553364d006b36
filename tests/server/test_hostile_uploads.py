"""Hostile uploads cost bounded memory and never get a class without a probability (issue 15)."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from server_forms import upload

from covidct.io.budget import DEFAULT_REQUEST_VOXELS, VoxelPool


def _image_bytes(image: Image.Image, pillow_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format)
    return buffer.getvalue()


def black_png(side: int) -> bytes:
    return _image_bytes(Image.new("L", (side, side)), "PNG")


def test_sixteen_black_4096_px_pngs_are_refused_before_any_is_decoded(client, monkeypatch):
    """The issue's upload: 260 KB on the wire, 1 GiB of float32 decoded; refused from the headers alone."""
    decoded = []
    monkeypatch.setattr(
        "covidct.io.readers.read_grayscale",
        lambda *a, **k: decoded.append(a) or np.zeros((64, 64), np.float32),
    )
    png = black_png(4096)
    assert 16 * len(png) < 300_000

    response = client.post("/api/v1/predict", files=upload(*[(f"black{i:02d}.png", png) for i in range(16)]))

    assert response.status_code == 413
    assert response.json()["detail"] == (
        "black12.png: decoding it would bring this request to "
        f"{13 * 4096 * 4096:,} voxels, over the {DEFAULT_REQUEST_VOXELS:,}-voxel "
        "budget per request; send fewer or smaller files"
    )
    assert decoded == []


def test_a_volume_over_the_request_budget_is_413_naming_it(make_client, tmp_path):
    client = make_client(max_request_voxels=64 * 64 * 10)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.full((64, 64, 11), -1000, np.int16), np.eye(4)), path)

    response = client.post("/api/v1/predict", files=upload(("ct.nii.gz", path.read_bytes())))

    assert response.status_code == 413
    assert response.json()["detail"].startswith(
        "ct.nii.gz: decoding it would bring this request to 45,056 voxels, over the 40,960-voxel budget"
    )


def test_requests_in_flight_share_a_total_budget_and_give_it_back(client, ct_png):
    pool: VoxelPool = client.app.state.voxel_pool
    held = pool.limit - 100
    assert pool.take(held)  # as if other requests were decoding

    busy = client.post("/api/v1/predict", files=upload(("slice.png", ct_png)))
    pool.give_back(held)
    served = client.post("/api/v1/predict", files=upload(("slice.png", ct_png)))

    assert (busy.status_code, busy.headers["retry-after"]) == (503, "1")
    assert busy.json()["detail"].startswith(
        f"slice.png: decoding it would take the server over its {pool.limit:,}-voxel budget"
    )
    assert served.status_code == 200 and pool.used == 0


def _postscript() -> bytes:
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 "
        b"0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"
    )


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (_postscript(), "content starting b'%!PS-Ado'"),
        (_image_bytes(Image.new("L", (64, 64)), "GIF"), "content starting b'GIF87a@\\x00'"),
        (
            _image_bytes(Image.new("L", (64, 64)), "TGA"),
            r"content starting b'\x00\x00\x03\x00\x00\x00\x00\x00'",
        ),
    ],
    ids=["postscript", "gif", "tga"],
)
def test_other_image_formats_named_png_are_415(client, content, found):
    response = client.post("/api/v1/predict", files=upload(("scan.png", content)))

    assert response.status_code == 415
    assert response.json()["detail"] == (
        f"scan.png: not a PNG, JPEG, BMP or TIFF image ({found}); "
        "expected PNG, JPEG, BMP, TIFF, DICOM or NIfTI"
    )


def test_a_float_tiff_with_nan_pixels_is_422_not_a_label(client):
    pixels = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    pixels[:8] = np.nan

    response = client.post(
        "/api/v1/predict", files=upload(("nan.tif", _image_bytes(Image.fromarray(pixels, mode="F"), "TIFF")))
    )

    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == "nan.tif: float image with NaN or infinite pixels; expected finite gray levels"
    )


def test_a_nifti_with_zero_slices_is_422_not_500(client, tmp_path):
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 0), np.int16), np.eye(4)), path)

    response = client.post("/api/v1/predict", files=upload(("empty.nii.gz", path.read_bytes())))

    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == "empty.nii.gz: the volume has 0 slices (shape (0, 64, 64)); expected at least one"
    )


def test_the_model_endpoint_shows_no_path_and_no_kernel_string(client, predictor):
    info = client.get("/api/v1/model").json()

    card = info["card"]
    text = json.dumps(card)
    assert predictor.card.data["origin"].startswith("/") and predictor.card.data["origin"] not in text
    assert (card["data"]["origin"], card["data"]["unusable_files"]) == (
        "(withheld)",
        len(predictor.card.data["unusable_files"]),
    )
    assert "platform" not in card["environment"] and predictor.card.environment["platform"] not in text
    assert not [value for value in _strings(card) if value.startswith("/")]


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []
