"""Decoded-voxel budgets: readers reserve a file's voxels from its header before decoding it (issue 15)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile
from volumes import chest_phantom, write_dicom_series, write_nifti

from covidct.errors import BusyError, UploadTooLargeError
from covidct.io.budget import VoxelBudget, VoxelPool
from covidct.io.dicom import read_dicom_series
from covidct.io.images import read_grayscale
from covidct.io.nifti import read_nifti
from covidct.io.readers import read_upload


def black_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_request_over_its_budget_names_the_file_and_the_limit():
    budget = VoxelBudget(3 * 64 * 64)
    budget.reserve("a.png", 2 * 64 * 64)

    with pytest.raises(
        UploadTooLargeError,
        match=(
            r"^b.png: decoding it would bring this request to 16,384 "
            r"voxels, over the 12,288-voxel budget per request"
        ),
    ):
        budget.reserve("b.png", 2 * 64 * 64)
    assert budget.used == 2 * 64 * 64


def test_requests_share_the_pool_and_give_their_voxels_back():
    pool = VoxelPool(100)
    with VoxelBudget(80, pool=pool) as first:
        first.reserve("a.png", 60)
        with (
            pytest.raises(
                BusyError, match=r"^b.png: decoding it would take the server over its 100-voxel budget"
            ),
            VoxelBudget(80, pool=pool) as second,
        ):
            second.reserve("b.png", 50)
        assert pool.used == 60
    assert pool.used == 0


def test_an_image_is_refused_from_its_header_before_it_is_decoded(monkeypatch):
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))

    with pytest.raises(UploadTooLargeError, match=r"scan.png: .* over the 4,095-voxel budget per request"):
        read_grayscale(("scan.png", black_png(64)), budget=VoxelBudget(4095))
    assert decoded == []


def test_an_upload_of_many_small_black_pngs_is_refused_whole():
    files = [(f"black{i}.png", black_png(256)) for i in range(16)]

    with pytest.raises(
        UploadTooLargeError, match=r"^black4.png: .* over the 300,000-voxel budget per request"
    ):
        read_upload(files, budget=VoxelBudget(300_000))


def test_volumes_are_counted_from_their_headers(tmp_path):
    hu = chest_phantom(6, 64, range(1, 5))
    nifti = write_nifti(tmp_path / "ct.nii.gz", hu)
    series = write_dicom_series(tmp_path / "series", hu)

    for read in (lambda b: read_nifti(nifti, budget=b), lambda b: read_dicom_series(series, budget=b)):
        budget = VoxelBudget(hu.size)
        read(budget)
        assert budget.used == hu.size
        with pytest.raises(UploadTooLargeError, match=r"over the \d[\d,]*-voxel budget"):
            read(VoxelBudget(hu.size - 1))


def test_the_budget_leaves_within_budget_uploads_alone():
    pixels = np.full((40, 56), 128, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")

    upload = read_upload([("a.png", buffer.getvalue())], budget=VoxelBudget(40 * 56))

    assert [name for name, _ in upload.images] == ["a.png"] and upload.failures == []
