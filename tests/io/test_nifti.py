"""read_nifti: canonical axial slices in HU whatever the stored orientation, and a clear
error for each bad volume."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from volumes import chest_phantom, write_nifti

from covidct.errors import InputError
from covidct.io.nifti import read_nifti
from covidct.io.volume import privacy_key

PHANTOM = np.round(chest_phantom(5, 40, lung_slices=[1, 2, 3]))
PHANTOM[:, :4, :6] = 500.0  # a bright mark in the top-left corner: a flipped or transposed reader moves it


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_a_volume_reads_as_axial_hu_slices_inferior_first(tmp_path, orientation, name):
    path = write_nifti(tmp_path / name, PHANTOM, orientation=orientation)

    volume = read_nifti(path)

    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu, PHANTOM)
    assert volume.slice_names == tuple(f"{name}#{k}" for k in range(5))
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.7))
    np.testing.assert_allclose(np.diff(volume.slice_positions_mm), 2.5)
    assert volume.source == str(path) and volume.study_key == privacy_key(str(path))


def test_slices_stored_superior_first_come_back_inferior_first(tmp_path):
    data = np.ascontiguousarray(np.transpose(PHANTOM, (2, 1, 0))[:, :, ::-1]).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([-0.7, -0.7, -2.5, 1.0])), tmp_path / "flipped.nii")

    np.testing.assert_array_equal(read_nifti(tmp_path / "flipped.nii").hu, PHANTOM)


def test_a_4d_volume_with_one_timepoint_is_read_as_3d(tmp_path):
    data = np.transpose(PHANTOM, (2, 1, 0))[..., None].astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([-0.7, -0.7, 2.5, 1.0])), tmp_path / "one_time.nii")

    np.testing.assert_array_equal(read_nifti(tmp_path / "one_time.nii").hu, PHANTOM)


def test_scaling_in_the_header_is_applied(tmp_path):
    image = nib.Nifti1Image(
        np.transpose((PHANTOM + 1024) / 2, (2, 1, 0)).astype(np.int16), np.diag([-0.7, -0.7, 2.5, 1.0])
    )
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, tmp_path / "scaled.nii")

    np.testing.assert_allclose(read_nifti(tmp_path / "scaled.nii").hu, PHANTOM, atol=1.0)


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_uploaded_bytes_read_like_files(tmp_path, name):
    path = write_nifti(tmp_path / name, PHANTOM)

    from_bytes = read_nifti((name, path.read_bytes()))

    np.testing.assert_array_equal(from_bytes.hu, PHANTOM)
    assert from_bytes.source == name


def _save(tmp_path, name, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), tmp_path / name)
    return tmp_path / name


def _write(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    return tmp_path / name


# (id, make the file from tmp_path, read options, expected message)
BAD_VOLUMES = [
    (
        "4d",
        lambda t: _save(t, "fmri.nii", np.zeros((40, 40, 5, 3), np.int16)),
        {},
        r"fmri\.nii: 4-D volume of shape \(40, 40, 5, 3\); expected one 3-D CT volume \(split a 4-D series",
    ),
    (
        "2d",
        lambda t: _save(t, "flat.nii", np.zeros((40, 40), np.int16)),
        {},
        r"flat\.nii: 2-D volume of shape \(40, 40\); expected one 3-D CT volume \(save the series",
    ),
    (
        "not-hu",
        lambda t: _save(t, "mr.nii.gz", np.full((40, 40, 5), 300, np.int16)),
        {},
        r"mr\.nii\.gz: values from 300 to 300 .* do not look like CT Hounsfield units",
    ),
    (
        "nan-voxel",
        lambda t: _save(t, "nan.nii", np.where(np.arange(8000).reshape(40, 40, 5) == 7, np.nan, -1000.0)),
        {},
        r"nan\.nii: NaN or infinite voxel values; expected a CT volume in finite HU",
    ),
    (
        "under-32-px",
        lambda t: _save(t, "small.nii", np.full((16, 40, 5), -1000, np.int16)),
        {},
        r"slices are 16x40 pixels; expected at least 32 on each side",
    ),
    (
        "over-pixel-cap",
        lambda t: _save(t, "big.nii", np.full((40, 40, 2), -1000, np.int16)),
        {"max_pixels": 1000},
        r"big\.nii: slices are 40x40 pixels, over the 1,000-pixel limit",
    ),
    ("empty", lambda t: _write(t, "empty.nii", b""), {}, r"empty\.nii: not a readable NIfTI volume"),
    (
        "text",
        lambda t: _write(t, "notes.nii", b"not a volume\n" * 40),
        {},
        r"notes\.nii: not a readable NIfTI volume",
    ),
    (
        "truncated-gz",
        lambda t: _write(t, "cut.nii.gz", gzip.compress(b"\x5c\x01" + b"\0" * 2000)[:60]),
        {},
        r"cut\.nii\.gz: not a readable NIfTI volume",
    ),
    ("missing", lambda t: t / "absent.nii", {}, r"absent\.nii: file not found"),
]


@pytest.mark.parametrize(
    ("make", "options", "message"), [case[1:] for case in BAD_VOLUMES], ids=[case[0] for case in BAD_VOLUMES]
)
def test_bad_volumes_get_a_specific_error(tmp_path, make, options, message):
    with pytest.raises(InputError, match=message):
        read_nifti(make(tmp_path), **options)


def test_a_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path):
    """A gzip stream whose header says 4000 x 4000 x 4000 voxels: refused from the
    header, nothing is inflated."""
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.int16)
    data = gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1000)

    with pytest.raises(
        InputError,
        match=r"bomb\.nii\.gz: 4000 slices of 4000x4000 pixels are over the 536,870,912-voxel limit",
    ):
        read_nifti(("bomb.nii.gz", data))


def test_an_empty_upload_is_an_empty_file():
    with pytest.raises(InputError, match=r"scan\.nii: empty file"):
        read_nifti(("scan.nii", b""))


def test_a_volume_with_zero_slices_is_an_input_error(tmp_path):
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 0), np.int16), np.eye(4)), path)

    for source in (path, ("empty.nii.gz", path.read_bytes())):
        with pytest.raises(
            InputError,
            match=r"empty.nii.gz: the volume has 0 slices \(shape \(0, 64, 64\)\); expected at least one$",
        ):
            read_nifti(source)
