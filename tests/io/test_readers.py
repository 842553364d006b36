"""read_volume, read_path_volumes and read_upload, plus the contract every reader keeps (dtype,
shape, range, metadata)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import RLELossless
from volumes import PATIENT_ATTRIBUTES, chest_phantom, write_dicom_series, write_nifti

from covidct.errors import InputError
from covidct.io.discover import VolumeInput, VolumeKind
from covidct.io.images import read_grayscale
from covidct.io.readers import (
    is_volume_path,
    read_path_volumes,
    read_upload,
    read_volume,
)
from covidct.io.volume import Volume

PHANTOM = chest_phantom(4, 40, lung_slices=[1, 2])


def png_bytes(size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 255, size * size).reshape(size, size).astype(np.uint8), mode="L").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def test_read_volume_reads_either_kind(tmp_path):
    files = write_dicom_series(tmp_path / "series", PHANTOM)
    nifti = write_nifti(tmp_path / "ct.nii.gz", np.round(PHANTOM))

    from_dicom = read_volume(VolumeInput(VolumeKind.DICOM, "my series", tuple(files)))
    from_nifti = read_volume(VolumeInput(VolumeKind.NIFTI, str(nifti), (nifti,)))

    assert from_dicom.source == "my series"
    np.testing.assert_allclose(from_dicom.hu, PHANTOM, atol=1.001)
    np.testing.assert_array_equal(from_nifti.hu, np.round(PHANTOM))


@pytest.mark.parametrize("kind", ["png", "dicom", "nifti"])
def test_every_reader_keeps_the_same_contract(tmp_path, kind):
    """One set of expectations for every format: float32 arrays of the documented
    shape, range and metadata."""
    if kind == "png":
        (tmp_path / "slice.png").write_bytes(png_bytes())
        gray = read_grayscale(tmp_path / "slice.png")
        assert gray.dtype == np.float32 and gray.shape == (40, 40) and 0.0 <= gray.min() and gray.max() <= 1.0
        return
    if kind == "dicom":
        volume = read_volume(
            VolumeInput(
                VolumeKind.DICOM, str(tmp_path / "s"), tuple(write_dicom_series(tmp_path / "s", PHANTOM))
            )
        )
    else:
        path = write_nifti(tmp_path / "ct.nii", PHANTOM)
        volume = read_volume(VolumeInput(VolumeKind.NIFTI, str(path), (path,)))
    assert isinstance(volume, Volume)
    assert volume.hu.dtype == np.float32 and volume.hu.shape == (4, 40, 40)
    assert -1100 < volume.hu.min() < -900 and 0 < volume.hu.max() < 100  # HU: air and soft tissue
    assert len(volume.slice_names) == 4 and len(volume.study_key) == 16 and len(volume.series_key) == 16
    assert volume.slice_positions_mm.shape == (4,) and len(volume.spacing_mm) == 3


def test_a_manifest_path_may_be_a_series_folder_a_dicom_file_or_a_nifti_file(tmp_path):
    files = write_dicom_series(tmp_path / "series", PHANTOM)
    write_dicom_series(
        tmp_path / "series" / "nested", PHANTOM[:2], seed=3
    )  # another study below: not read with this row
    nifti = write_nifti(tmp_path / "ct.nii", PHANTOM)

    assert [v.n_slices for v in read_path_volumes(tmp_path / "series")] == [4]
    assert [v.n_slices for v in read_path_volumes(files[0])] == [1]
    assert [v.n_slices for v in read_path_volumes(nifti)] == [4]
    assert all(is_volume_path(p) for p in (tmp_path / "series", files[0], nifti))
    assert not is_volume_path(tmp_path / "slice.png")


def test_a_folder_without_dicom_files_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()

    with pytest.raises(
        InputError, match=r"empty: no DICOM files in this folder \(subfolders are not searched\)"
    ):
        read_path_volumes(tmp_path / "empty")


def test_an_unreadable_folder_is_an_error(tmp_path, monkeypatch):
    """Simulated: tests may run as root, who can read any folder."""
    (tmp_path / "locked").mkdir()

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(InputError, match=r"locked: cannot read folder \(Permission denied\)"):
        read_path_volumes(tmp_path / "locked")


def test_an_upload_is_sorted_into_images_volumes_and_failures(tmp_path):
    series = write_dicom_series(tmp_path / "a", PHANTOM, transfer_syntax=RLELossless)
    other = write_dicom_series(tmp_path / "b", PHANTOM[:2], seed=5)
    nifti = write_nifti(tmp_path / "ct.nii.gz", PHANTOM)
    uploads = (
        [("slice.png", png_bytes())]
        + [(f"a_{p.name}", p.read_bytes()) for p in series]
        + [("ct.nii.gz", nifti.read_bytes())]
    )
    uploads += [(f"b_{p.name}", p.read_bytes()) for p in other] + [
        ("empty.png", b""),
        ("cut.dcm", series[0].read_bytes()[:500]),
        ("tiny.png", png_bytes(8)),
    ]

    upload = read_upload(uploads)

    assert [name for name, _ in upload.images] == ["slice.png"]
    assert upload.images[0][1].shape == (40, 40)
    assert [(v.source, v.n_slices) for v in upload.volumes] == [
        ("ct.nii.gz", 4),
        ("a_IM0000.dcm (+3 files of its series)", 4),
        ("b_IM0000.dcm (+1 files of its series)", 2),
    ]
    assert {(f.path, f.reason.split(";")[0]) for f in upload.failures} == {
        ("empty.png", "empty file"),
        ("tiny.png", "image is 8x8 pixels"),
        ("cut.dcm", "no pixel data (CT Image Storage, so the file is probably truncated)"),
    }
    reported = repr(upload.volumes) + repr(upload.failures)
    assert not any(value in reported for value in PATIENT_ATTRIBUTES.values())


def test_the_upload_pixel_cap_applies_to_every_kind(tmp_path):
    series = write_dicom_series(tmp_path / "a", PHANTOM)
    uploads = [
        ("slice.png", png_bytes()),
        ("s.dcm", series[0].read_bytes()),
        ("ct.nii", write_nifti(tmp_path / "ct.nii", PHANTOM).read_bytes()),
    ]

    upload = read_upload(uploads, max_pixels=1000)

    assert upload.images == [] and upload.volumes == []
    assert [Path(f.path).name for f in upload.failures] == ["slice.png", "ct.nii", "s.dcm"]
    assert all("over the 1,000-pixel limit" in f.reason for f in upload.failures)
