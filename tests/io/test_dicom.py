"""read_dicom_series and group_dicom_series: HU, slice order and compression on real files, a clear
error for each bad one."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from volumes import PATIENT_ATTRIBUTES, chest_phantom, gray_to_hu, write_dicom_series

from covidct.errors import InputError
from covidct.io.dicom import group_dicom_series, is_dicom, read_dicom_series
from covidct.io.images import read_grayscale
from covidct.io.volume import privacy_key
from covidct.preprocess.window import window_hu

PHANTOM = chest_phantom(6, 40, lung_slices=[2, 3, 4])


def bundled(name: str) -> Path:
    """A test file shipped inside the pydicom package; never one that ``get_testdata_file`` would download."""
    path = Path(pydicom.data.__file__).parent / "test_files" / name
    assert path.is_file(), f"{name} is not bundled with pydicom"
    return path


def test_a_bundled_ct_slice_reads_as_hounsfield_units():
    path = bundled("CT_small.dcm")
    reference = pydicom.dcmread(path)

    volume = read_dicom_series([path])

    assert volume.hu.shape == (1, 128, 128) and volume.hu.dtype == np.float32
    np.testing.assert_array_equal(
        volume.hu[0], reference.pixel_array * 1.0 - 1024.0
    )  # RescaleSlope 1, RescaleIntercept -1024
    assert volume.slice_names == ("CT_small.dcm",)
    assert volume.source == str(path)
    assert volume.study_key == privacy_key(reference.StudyInstanceUID)
    assert volume.series_key == privacy_key(reference.SeriesInstanceUID)
    assert volume.spacing_mm == pytest.approx((5.0, 0.661468, 0.661468))


def test_a_slice_without_preamble_and_file_meta_reads_as_the_full_file_does(tmp_path):
    """Files older than PS3.10 (no preamble, no file meta, Implicit VR) are still found in old archives:
    pydicom works out their encoding, and the HU are the same."""
    full = bundled("CT_small.dcm")
    bare = tmp_path / "bare"
    pydicom.dcmwrite(
        bare, Dataset(pydicom.dcmread(full)), implicit_vr=True, little_endian=True, enforce_file_format=False
    )
    assert bare.read_bytes()[128:132] != b"DICM"

    volume = read_dicom_series([bare])

    np.testing.assert_array_equal(volume.hu, read_dicom_series([full]).hu)
    assert group_dicom_series([bare, full]) == ([[bare, full]], [])


# (id, write_dicom_series options): every case is written with random slope/intercept and shuffled file names
SERIES = [
    ("explicit-vr", {}),
    ("implicit-vr", {"transfer_syntax": ImplicitVRLittleEndian}),
    ("rle-lossless", {"transfer_syntax": RLELossless}),
    ("jpeg2000-lossless", {"transfer_syntax": JPEG2000Lossless}),
    ("deflated", {"transfer_syntax": DeflatedExplicitVRLittleEndian}),
    ("monochrome1", {"photometric": "MONOCHROME1"}),
    ("multiframe", {"multiframe": True}),
    ("multiframe-rle", {"multiframe": True, "transfer_syntax": RLELossless}),
    ("order-by-slice-location", {"geometry": "slice_location"}),
    ("order-by-instance-number", {"geometry": "instance"}),
]


@pytest.mark.parametrize("options", [case[1] for case in SERIES], ids=[case[0] for case in SERIES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_written_series_reads_back_in_hu_and_in_slice_order(tmp_path, options, seed):
    files = write_dicom_series(tmp_path / "series", PHANTOM, seed=seed, **options)

    volume = read_dicom_series(files)

    np.testing.assert_allclose(
        volume.hu, PHANTOM, atol=1.0 + 1e-3
    )  # the largest random slope is 2: rounding is within 1 HU
    assert volume.source == str(
        files[0] if len(files) == 1 else tmp_path / "series"
    )  # a multi-frame series is one file
    if options.get("geometry") in (None, "position"):
        np.testing.assert_allclose(volume.slice_positions_mm, np.arange(6) * 2.5)
    else:
        assert volume.slice_positions_mm is None
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.7))


@pytest.mark.parametrize("options", [case[1] for case in SERIES], ids=[case[0] for case in SERIES])
def test_a_deferred_read_gives_the_eager_read_s_hu(tmp_path, options):
    files = write_dicom_series(tmp_path / "series", PHANTOM, seed=3, **options)
    eager = read_dicom_series(files)

    deferred = read_dicom_series(files, defer_pixels=True)

    assert deferred.pending is not None and eager.pending is None
    np.testing.assert_array_equal(deferred.hu_until(2), eager.hu[:2])
    np.testing.assert_array_equal(deferred.hu_until(deferred.n_slices), eager.hu)
    assert deferred.slice_names == eager.slice_names


def test_a_deferred_read_decodes_only_the_slices_asked_for_and_names_a_corrupt_file(tmp_path):
    """Headers are all checked up front; pixel data is decoded in slice order as asked, so a corrupt last
    slice fails only when it is reached, with the error an eager read gives."""
    files = write_dicom_series(tmp_path / "series", PHANTOM, seed=4)
    last = tmp_path / "series" / read_dicom_series(files).slice_names[-1]
    last.write_bytes(last.read_bytes()[:-200])
    with pytest.raises(InputError, match="cannot decode pixel data") as eager_error:
        read_dicom_series(files)

    deferred = read_dicom_series(files, defer_pixels=True)

    assert deferred.hu_until(len(files) - 1).shape == (len(files) - 1, 40, 40)
    for _ in range(2):  # the error is kept for every later caller
        with pytest.raises(InputError, match="cannot decode pixel data") as deferred_error:
            deferred.hu_until(len(files))
        assert deferred_error.value.path == eager_error.value.path == str(last)


@pytest.mark.shared_data
@pytest.mark.parametrize("options", [case[1] for case in SERIES[:6]], ids=[case[0] for case in SERIES[:6]])
def test_a_series_written_from_real_slices_windows_back_to_them(shared_data, tmp_path, options):
    """Real CT slices (PNG, already windowed) -> inverse lung window to HU -> DICOM -> HU -> lung
    window: the same pixels."""
    pngs = sorted((shared_data / "sars_cov2_ct" / "images" / "non-COVID").glob("*.png"))[:5]
    gray = np.stack(
        [np.asarray(Image.fromarray(read_grayscale(path)).resize((64, 48)), np.float32) for path in pngs]
    ).clip(0, 1)
    files = write_dicom_series(tmp_path / "series", gray_to_hu(gray), seed=7, **options)

    volume = read_dicom_series(files)

    assert volume.hu.shape == (5, 48, 64)
    np.testing.assert_allclose(
        window_hu(volume.hu), gray, atol=1.0 / 1500 + 1e-5
    )  # within 1 HU (the largest slope is 2)


def test_monochrome1_with_rescale_tags_gives_the_same_hu_as_monochrome2(tmp_path):
    """For CT the modality LUT gives physical HU; MONOCHROME1 only inverts the display,
    so nothing is inverted."""
    mono1 = read_dicom_series(write_dicom_series(tmp_path / "m1", PHANTOM, photometric="MONOCHROME1"))
    mono2 = read_dicom_series(write_dicom_series(tmp_path / "m2", PHANTOM, photometric="MONOCHROME2"))

    np.testing.assert_array_equal(mono1.hu, mono2.hu)


@pytest.mark.parametrize("where", ["shared", "per-frame"])
def test_enhanced_ct_rescale_in_functional_groups_is_applied(tmp_path, where):
    path = write_dicom_series(tmp_path / "series", PHANTOM, seed=1, multiframe=True)[0]
    dataset = pydicom.dcmread(path)
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = dataset.RescaleSlope, dataset.RescaleIntercept
    del dataset.RescaleSlope, dataset.RescaleIntercept
    if where == "shared":
        group = Dataset()
        group.PixelValueTransformationSequence = [transform]
        dataset.SharedFunctionalGroupsSequence = [group]
    else:
        for group in dataset.PerFrameFunctionalGroupsSequence:
            group.PixelValueTransformationSequence = [transform]
    dataset.save_as(path)

    np.testing.assert_allclose(read_dicom_series([path]).hu, PHANTOM, atol=1.0 + 1e-3)


def test_jpeg_ls_lossless_decodes(tmp_path):
    """The bundled JPEG-LS file (decoded through CharLS, the faster plugin) is relabelled CT and checked
    against its uncompressed twin."""
    dataset = pydicom.dcmread(bundled("MR_small_jpeg_ls_lossless.dcm"))
    dataset.Modality = "CT"
    dataset.save_as(tmp_path / "jls.dcm")

    volume = read_dicom_series([tmp_path / "jls.dcm"])

    np.testing.assert_array_equal(
        volume.hu[0], pydicom.dcmread(bundled("MR_small.dcm")).pixel_array.astype(np.float32)
    )


def test_jpeg_lossless_pixel_data_decodes_with_the_installed_plugins():
    """No JPEG Lossless encoder exists here and the only bundled file is RGB (refused by the reader as colour,
    see ``BAD_INPUT``): this pins the decoder ``read_dicom_series`` relies on for that transfer syntax."""
    dataset = pydicom.dcmread(bundled("SC_rgb_jpeg_gdcm.dcm"))
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1

    pixels = dataset.pixel_array

    assert pixels.shape == (dataset.Rows, dataset.Columns, 3)
    assert pixels.dtype == np.uint8 and pixels.std() > 0


def test_uploaded_bytes_read_like_files(tmp_path):
    files = write_dicom_series(tmp_path / "series", PHANTOM, transfer_syntax=RLELossless)
    uploads = [(path.name, path.read_bytes()) for path in files]

    from_bytes, from_files = read_dicom_series(uploads, source="upload"), read_dicom_series(files)

    np.testing.assert_array_equal(from_bytes.hu, from_files.hu)
    assert from_bytes.source == "upload" and from_bytes.study_key == from_files.study_key


def test_no_patient_attribute_reaches_the_volume(tmp_path):
    volume = read_dicom_series(write_dicom_series(tmp_path / "series", PHANTOM))

    text = repr(volume) + "".join(volume.slice_names) + volume.source
    for value in PATIENT_ATTRIBUTES.values():
        assert value not in text
    assert volume.study_key == privacy_key(
        pydicom.dcmread(tmp_path / "series" / "IM0000.dcm").StudyInstanceUID
    )


def _relabelled(tmp_path: Path, name: str, **changes) -> Path:
    dataset = pydicom.dcmread(bundled(name))
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    path = tmp_path / f"edited_{name}"
    dataset.save_as(path)
    return path


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    (tmp_path / name).write_bytes(content)
    return tmp_path / name


# (id, make the files from tmp_path, read options, expected message)
BAD_INPUT = [
    (
        "no-pixel-data",
        lambda t: [bundled("rtstruct.dcm")],
        {},
        r"rtstruct\.dcm: no pixel data \(RT Structure Set Storage\); expected a CT image slice",
    ),
    (
        "other-modality",
        lambda t: [bundled("MR_small.dcm")],
        {},
        r"MR_small\.dcm: modality is MR \(MR Image Storage\); expected CT",
    ),
    (
        "colour",
        lambda t: [_relabelled(t, "SC_rgb_jpeg_gdcm.dcm", Modality="CT")],
        {},
        r"3 samples per pixel \(RGB\); expected a grayscale CT image",
    ),
    (
        "monochrome1-without-rescale",
        lambda t: [
            _relabelled(
                t,
                "CT_small.dcm",
                PhotometricInterpretation="MONOCHROME1",
                RescaleSlope=None,
                RescaleIntercept=None,
            )
        ],
        {},
        r"MONOCHROME1 without RescaleSlope/RescaleIntercept; cannot tell Hounsfield units",
    ),
    ("empty-file", lambda t: [_write(t, "empty.dcm", b"")], {}, r"empty\.dcm: empty file"),
    (
        "text-file",
        lambda t: [_write(t, "notes.dcm", b"patient notes, not an image\n" * 20)],
        {},
        r"notes\.dcm: not a DICOM file",
    ),
    (
        "truncated-header",
        lambda t: [_write(t, "cut.dcm", bundled("CT_small.dcm").read_bytes()[:700])],
        {},
        r"cut\.dcm: no pixel data \(CT Image Storage, so the file is probably truncated\)",
    ),
    (
        "truncated-pixels",
        lambda t: [_write(t, "cut.dcm", bundled("CT_small.dcm").read_bytes()[:20000])],
        {},
        r"cut\.dcm: cannot decode pixel data \(Explicit VR Little Endian: .*less than expected",
    ),
    (
        "under-32-px",
        lambda t: write_dicom_series(t / "s", chest_phantom(2, 16, [0])),
        {},
        r"slices are 16x16 pixels; expected at least 32 on each side",
    ),
    (
        "over-pixel-cap",
        lambda t: [bundled("CT_small.dcm")],
        {"max_pixels": 10_000},
        r"slices are 128x128 pixels, over the 10,000-pixel limit",
    ),
    (
        "sizes-differ",
        lambda t: write_dicom_series(t / "a", PHANTOM[:2]) + [bundled("CT_small.dcm")],
        {},
        r"slices differ in size \(IM0000\.dcm: 40x40, .*CT_small\.dcm: 128x128\)",
    ),
    ("no-files", lambda t: [], {}, r"no DICOM files in this series"),
]


@pytest.mark.parametrize(
    ("make", "options", "message"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_gets_a_specific_error(tmp_path, make, options, message):
    with pytest.raises(InputError, match=message):
        read_dicom_series(make(tmp_path), **options)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A header claiming 60000 x 60000 pixels over a few bytes of pixel data: refused
    from the header alone."""
    path = _relabelled(tmp_path, "CT_small.dcm", Rows=60000, Columns=60000)

    with pytest.raises(InputError, match=r"slices are 60000x60000 pixels, over the 64,000,000-pixel limit"):
        read_dicom_series([path])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"NumberOfFrames": 2_000_000_000},
            r"2000000000 slices of 128x128 pixels are over the 536,870,912-voxel limit",
        ),
        ({"NumberOfFrames": 0}, r"NumberOfFrames is 0; expected a positive integer"),
    ],
    ids=["billions-of-frames", "no-frames"],
)
def test_bad_header_values_are_refused_naming_the_file(tmp_path, changes, message):
    path = _relabelled(tmp_path, "CT_small.dcm", **changes)

    with pytest.raises(InputError, match=rf"{path.name}: {message}"):
        read_dicom_series([path])


def test_a_corrupt_header_value_is_refused_naming_the_file(tmp_path):
    """RescaleSlope (0028,1053) "1 " patched to "x " in the bytes: pydicom reads it, converting it fails."""
    data = (
        bundled("CT_small.dcm")
        .read_bytes()
        .replace(b"\x28\x00\x53\x10DS\x02\x001 ", b"\x28\x00\x53\x10DS\x02\x00x ")
    )
    path = _write(tmp_path, "bad_slope.dcm", data)

    with pytest.raises(InputError, match=r"bad_slope\.dcm: invalid value in the DICOM header \(ValueError"):
        read_dicom_series([path])


def test_files_are_grouped_by_series_and_unreadable_ones_reported(tmp_path):
    first = write_dicom_series(tmp_path / "a", PHANTOM[:3], seed=0)
    second = write_dicom_series(tmp_path / "b", PHANTOM[:2], seed=1)
    broken = _write(tmp_path, "broken.dcm", b"a text file with a DICOM name\n" * 10)
    mixed = [second[0], first[0], broken, second[1], first[1], first[2]]

    groups, failures = group_dicom_series(mixed)

    assert groups == [[second[0], second[1]], [first[0], first[1], first[2]]]
    assert [failure.path for failure in failures] == [str(broken)]
    assert failures[0].reason == "not a DICOM file (no 'DICM' marker and no DICOM header)"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("slice.dcm", b"", True),  # the name decides; the reader then says it is empty
        ("1.2.840.113619.2.55", b"\0" * 128 + b"DICM" + b"\0" * 16, True),
        ("IM0001", b"\0" * 128 + b"DICM", True),
        ("README", b"just text" * 30, False),
        ("short", b"DICM", False),
    ],
)
def test_dicom_files_are_recognised_by_name_or_marker(tmp_path, name, content, expected):
    path = _write(tmp_path, name, content)

    assert is_dicom(path) is expected
    assert is_dicom((name, content)) is expected


def test_explicit_vr_little_endian_is_the_writer_default(tmp_path):
    """Guards the table above: the uncompressed case really is uncompressed."""
    path = write_dicom_series(tmp_path / "s", PHANTOM[:1])[0]

    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert get_testdata_file("CT_small.dcm", download=False) == str(bundled("CT_small.dcm"))


def _deflated_bomb(tmp_path: Path) -> Path:
    """A Deflated Explicit VR file of 3 black 4096 x 4096 16-bit frames: 96 MiB inflated, ~100 KB on disk."""
    dataset = pydicom.dcmread(bundled("CT_small.dcm"))
    dataset.Rows = dataset.Columns = 4096
    dataset.NumberOfFrames = 3
    dataset.PixelData = bytes(3 * 4096 * 4096 * 2)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "bomb.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_a_deflated_bomb_is_refused_before_it_is_inflated_whole(tmp_path):
    path = _deflated_bomb(tmp_path)
    assert path.stat().st_size < 1_000_000
    message = (
        r"bomb\.dcm: Deflated Explicit VR Little Endian data "
        r"inflates past 67,108,864 bytes; expected one CT slice"
    )

    groups, failures = group_dicom_series([path])
    assert groups == [] and len(failures) == 1
    assert re.match(message, f"{Path(failures[0].path).name}: {failures[0].reason}")
    with pytest.raises(InputError, match=message):
        read_dicom_series([("bomb.dcm", path.read_bytes())])


@pytest.mark.parametrize(
    ("keyword", "value"), [("RescaleSlope", "NaN"), ("RescaleSlope", "inf"), ("RescaleIntercept", "-inf")]
)
def test_a_non_finite_rescale_value_is_named(tmp_path, keyword, value):
    path = _relabelled(tmp_path, "CT_small.dcm", **{keyword: value})

    with pytest.raises(InputError, match=rf"{path.name}: {keyword} is -?(nan|inf); expected a finite number"):
        read_dicom_series([path])


def test_float_pixel_data_with_nan_is_refused_naming_the_file(tmp_path):
    dataset = pydicom.dcmread(bundled("CT_small.dcm"))
    pixels = np.full((dataset.Rows, dataset.Columns), -1000.0, np.float32)
    pixels[10, 10] = np.nan
    del dataset.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
        delattr(dataset, keyword)
    dataset.BitsAllocated = 32
    dataset.FloatPixelData = pixels.tobytes()
    path = tmp_path / "float.dcm"
    dataset.save_as(path)

    with pytest.raises(
        InputError,
        match=r"float\.dcm: NaN or infinite pixel values \(float pixel data\); expected finite CT values",
    ):
        read_dicom_series([path])


def test_a_malformed_uid_is_never_printed(tmp_path, caplog):
    """pydicom's validation warning quotes a malformed UI value whole, and UIDs can carry patient names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing the file warns too; that is the test's doing
        path = _relabelled(
            tmp_path,
            "CT_small.dcm",
            SeriesInstanceUID="1.2.826.SMITH^JOHN",
            StudyInstanceUID="1.2.826.DOE^JANE",
        )
    caplog.clear()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups, _ = group_dicom_series([path])
        volume = read_dicom_series(groups[0])

    printed = [str(w.message) for w in caught] + [record.getMessage() for record in caplog.records]
    assert not [text for text in printed if "SMITH" in text or "DOE" in text]
    assert volume.series_key == privacy_key("1.2.826.SMITH^JOHN")
