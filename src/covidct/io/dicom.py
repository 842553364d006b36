"""DICOM CT files -> a ``Volume`` in Hounsfield units: series grouping, slice order, checks before decoding.

Pixel data of any transfer syntax pydicom can read is decoded, compressed ones (JPEG Lossless,
JPEG-LS, JPEG 2000, RLE) through the pylibjpeg plugins (JPEG-LS through CharLS, ``pyjpegls``, which is
about 3x faster) and Deflated Explicit VR by pydicom itself.

Privacy: nothing read here leaves as text except the modality, the SOP class and the transfer
syntax; studies and series are referred to by ``privacy_key`` hashes of their UIDs, never by the
UIDs or any patient attribute (PS3.15 Annex E lists what identifies a patient).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidct.errors import CovidctError, InputError
from covidct.io.budget import MAX_PIXELS, VoxelBudget
from covidct.io.failures import InputFailure
from covidct.io.images import IMAGE_SUFFIXES
from covidct.io.volume import PendingSlices, Volume, check_volume_size, privacy_key

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DicomSource = Path | tuple[str, bytes]

DICOM_SUFFIX = ".dcm"
_MARKER_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # FloatPixelData, DoubleFloatPixelData, PixelData
# pydicom inflates a Deflated Explicit VR Little Endian file whole, even for its header: a 204 KB file grew to
# 614 MiB (issue 15). It is inflated here with this cap instead, twice a 4096 x 4096 16-bit slice.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
# pydicom tries libjpeg first for JPEG-LS: 22 ms a 512 x 512 slice, CharLS 7 ms (issue 16). By UID: JPEG-LS
# lossless, near-lossless.
_FASTEST_DECODER = {"1.2.840.10008.1.2.4.80": "pyjpegls", "1.2.840.10008.1.2.4.81": "pyjpegls"}


def is_dicom(source: DicomSource) -> bool:
    """True for a ``.dcm`` name, or for content carrying the ``DICM`` marker after its
    preamble (extension-less files).

    A 2-D image suffix (``.png``, ``.jpg``, ...) is never DICOM: its content is not even read.
    """
    name = source[0] if isinstance(source, tuple) else source.name
    suffix = Path(name).suffix.lower()
    if suffix == DICOM_SUFFIX:
        return True
    if suffix in IMAGE_SUFFIXES:
        return False
    if isinstance(source, tuple):
        head = source[1][: _MARKER_OFFSET + 4]
    else:
        try:
            with source.open("rb") as handle:
                head = handle.read(_MARKER_OFFSET + 4)
        except OSError:
            return False
    return head[_MARKER_OFFSET:] == b"DICM"


def group_dicom_series(paths: Sequence[DicomSource]) -> tuple[list[list[DicomSource]], list[InputFailure]]:
    """Group DICOM files by SeriesInstanceUID, reading headers only; series and files keep their given order.

    A file without a SeriesInstanceUID is a series of its own. A file whose header cannot be read is
    a failure, and the others are grouped without it.
    """
    series: dict[str, list[DicomSource]] = {}
    failures: list[InputFailure] = []
    for path in paths:
        try:
            uid = (
                _series_uid(_read(path, stop_before_pixels=True), _name(path))
                or f"no series uid: {_name(path)}"
            )
        except InputError as error:
            failures.append(InputFailure.from_error(error, _name(path)))
            continue
        series.setdefault(uid, []).append(path)
    return list(series.values()), failures


def read_dicom_series(
    files: Sequence[DicomSource],
    *,
    source: str | None = None,
    max_pixels: int = MAX_PIXELS,
    budget: VoxelBudget | None = None,
    defer_pixels: bool = False,
) -> Volume:
    """Read the files of ONE series (single- or multi-frame) into a ``Volume`` of HU,
    ordered along the slice normal.

    HU come from the modality LUT, ``stored * RescaleSlope + RescaleIntercept`` (PS3.3 C.11.1; for
    Enhanced CT, the Pixel Value Transformation functional group). MONOCHROME1 only says how to
    *display* values; when rescale tags are present the values are physical HU whatever the
    photometric interpretation, so they are used as they are. A CT image with neither rescale tags
    nor MONOCHROME2 is refused: its stored values cannot be trusted to be HU, and inverting them
    would only guess. Without rescale tags, MONOCHROME2 values are taken as HU (identity LUT).

    Slices are ordered by ImagePositionPatient projected on the normal of ImageOrientationPatient;
    when some file lacks that geometry, by SliceLocation; then by InstanceNumber (and frame number);
    else in the order given.

    Args:
        files: paths, or uploads as ``(name, bytes)`` decoded in memory.
        source: what to call the series in messages and outputs; by default its folder (or file).
        max_pixels: per-slice pixel cap, checked from the headers before any pixel is decoded.
        budget: decoded voxels the series counts against, reserved from the headers
            before any pixel is decoded.
        defer_pixels: check every header now but decode the pixels when ``Volume.hu_until`` asks for them
            (``Volume.pending``), so that a caller can work on the first slices while the rest decode.

    Raises:
        InputError: unreadable or truncated file, no pixel data, a modality other than CT, colour
            images, slices of different sizes, sizes over the caps, undecodable pixel data, NaN or
            infinite rescale values or pixels; each names its file.
        UploadTooLargeError: over ``budget``.
    """
    if not files:
        raise InputError("no DICOM files in this series", path=source)
    source = source or _default_source(files)
    names = [_name(file) for file in files]
    datasets = [_read(file) for file in files]
    headers = [_header(dataset, name, max_pixels) for dataset, name in zip(datasets, names, strict=True)]
    shape = _common_slice_shape(headers, names, source)
    n_frames = sum(len(h.frames) for h in headers)
    check_volume_size(source, (n_frames, *shape), max_pixels=max_pixels)
    if budget is not None:
        budget.reserve(source, n_frames * shape[0] * shape[1])
    order, positions = _slice_order([header.frames for header in headers])
    hu = np.empty((len(order), *shape), dtype=np.float32)
    steps = _decode_steps(datasets, headers, names, order, hu)
    if not defer_pixels:
        for _ in steps:  # every file decoded now
            pass
    first = headers[0]
    return Volume(
        source=source,
        study_key=privacy_key(first.study_uid or source),
        series_key=privacy_key(first.series_uid or source),
        hu=hu,
        slice_names=tuple(_slice_name(names[f], i, len(headers[f].frames)) for f, i in order),
        slice_positions_mm=positions,
        spacing_mm=_spacing_mm(first, positions),
        pending=PendingSlices(steps) if defer_pixels else None,
    )


def _decode_steps(
    datasets: list[Dataset | None],
    headers: list[_Header],
    names: list[str],
    order: list[tuple[int, int]],
    hu: np.ndarray,
) -> Iterator[int]:
    """Decode the files into ``hu`` (slices in ``order``: (file, frame) pairs), one file a step, files in the
    order of their first slice; each step yields how many leading slices of ``hu`` are then decoded."""
    destination = {frame: index for index, frame in enumerate(order)}
    first_slice = {}
    for index, (file_index, _) in enumerate(order):
        first_slice.setdefault(file_index, index)
    decoded = np.zeros(len(order), dtype=bool)
    for file_index in sorted(first_slice, key=first_slice.__getitem__):
        dataset, header, name = datasets[file_index], headers[file_index], names[file_index]
        for frame_index, frame_hu in enumerate(_hu_frames(dataset, header, name)):
            index = destination[(file_index, frame_index)]
            hu[index], decoded[index] = frame_hu, True
        datasets[file_index] = None  # its pixel bytes are no longer needed
        yield int(np.argmin(decoded)) if not decoded.all() else len(order)


@dataclass(frozen=True)
class _Frame:
    """What orders one frame: position along the slice normal (mm), SliceLocation, (InstanceNumber, frame)."""

    position_mm: float | None
    slice_location: float | None
    instance: tuple[int, int] | None


@dataclass(frozen=True)
class _Header:
    """The values of one file that reading needs, converted once (a corrupt value fails
    here, naming the file)."""

    rows: int
    columns: int
    rescale: np.ndarray  # (F, 2) float32 slope and intercept of each frame
    frames: list[_Frame]
    pixel_spacing_mm: tuple[float, float] | None
    slice_spacing_mm: float | None
    study_uid: str
    series_uid: str


def _header(dataset: Dataset, name: str, max_pixels: int) -> _Header:
    """Check that ``dataset`` is a grayscale CT image of an acceptable size, and read its
    geometry and modality LUT.

    Raises:
        InputError: not a CT image (see ``_check_is_ct_image``), a size over the caps (checked before
            anything else is read, so a header claiming billions of frames costs nothing), or a header
            value of the wrong type.
    """
    try:
        _check_is_ct_image(dataset, name)
        frames_value = dataset.get("NumberOfFrames")
        rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
        n_frames = 1 if frames_value in (None, "") else int(frames_value)
        if n_frames < 1:
            raise InputError(f"NumberOfFrames is {n_frames}; expected a positive integer", path=name)
        check_volume_size(name, (n_frames, rows, columns), max_pixels=max_pixels)
        pixel_spacing = dataset.get("PixelSpacing") or _shared(
            dataset, "PixelMeasuresSequence", "PixelSpacing"
        )
        between = dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness")
        return _Header(
            rows=rows,
            columns=columns,
            rescale=_frame_rescales(dataset, n_frames, name),
            frames=_frames(dataset, n_frames),
            pixel_spacing_mm=(float(pixel_spacing[0]), float(pixel_spacing[1]))
            if pixel_spacing is not None and len(pixel_spacing) == 2
            else None,
            slice_spacing_mm=None if between is None else float(between),
            study_uid=_raw_text(dataset, "StudyInstanceUID"),
            series_uid=_raw_text(dataset, "SeriesInstanceUID"),
        )
    except CovidctError:
        raise
    # A corrupt value surfaces as anything from ValueError to IndexError
    except Exception as error:  # noqa: BLE001
        raise InputError(
            f"invalid value in the DICOM header ({type(error).__name__}: {error})", path=name
        ) from None


def _series_uid(dataset: Dataset, name: str) -> str:
    try:
        return _raw_text(dataset, "SeriesInstanceUID")
    # A corrupt value surfaces as anything from ValueError to IndexError
    except Exception as error:  # noqa: BLE001
        raise InputError(
            f"invalid SeriesInstanceUID in the DICOM header ({type(error).__name__})", path=name
        ) from None


def _read(file: DicomSource, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse one file; files without the preamble (older than PS3.10) are read too when they
    parse to an SOP instance."""
    from pydicom.errors import InvalidDicomError  # pydicom loads when a DICOM file is read, not for --help

    name = _name(file)
    try:
        try:
            dataset = _parse(file, stop_before_pixels=stop_before_pixels, force=False)
        except InvalidDicomError:
            dataset = _parse(file, stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in dataset:
                raise InvalidDicomError from None
        return dataset
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError("file not found", path=name) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a DICOM file", path=name) from None
    except InvalidDicomError:
        is_empty = len(file[1]) == 0 if isinstance(file, tuple) else file.stat().st_size == 0
        raise InputError(
            "empty file" if is_empty else "not a DICOM file (no 'DICM' marker and no DICOM header)", path=name
        ) from None
    # On corrupt input pydicom raises anything from EOFError to struct.error
    except Exception as error:  # noqa: BLE001
        raise InputError(f"not a readable DICOM file ({type(error).__name__}: {error})", path=name) from None


def _parse(file: DicomSource, *, stop_before_pixels: bool, force: bool) -> Dataset:
    # pydicom converts values lazily, on access: only the attributes read in ``_header`` are ever converted
    # (so a corrupt value fails there, and patient attributes are never even decoded, let alone warned about).
    # The file meta is parsed once, here: handing the file to ``dcmread`` after the Deflated check parsed it
    # twice, 40% of reading a header (a series' headers are read when grouping and again when reading it).
    from pydicom import dcmread
    from pydicom.dataset import FileDataset
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stream = io.BytesIO(file[1]) if isinstance(file, tuple) else Path(file).open("rb")
    with stream:
        preamble = read_preamble(stream, force)
        meta = _read_file_meta_info(stream)
        syntax = meta.get("TransferSyntaxUID")
        if syntax == DeflatedExplicitVRLittleEndian:
            body, is_implicit, is_little = _inflated(stream, _name(file)), False, True
        elif syntax is not None and syntax.is_transfer_syntax:
            body, is_implicit, is_little = stream, syntax.is_implicit_VR, syntax.is_little_endian
        else:  # no meta, or a private syntax: pydicom works out the encoding
            stream.seek(0)
            return _with_syntax(dcmread(stream, stop_before_pixels=stop_before_pixels, force=force))
        stop = (lambda tag, vr, length: tag in _PIXEL_TAGS) if stop_before_pixels else None
        dataset = read_dataset(body, is_implicit, is_little, stop_when=stop)
        # Given the stream, as ``dcmread`` does: a file's path becomes ``filename``, an upload's name is not
        # taken for a path on this machine.
        parsed = FileDataset(
            stream,
            dataset,
            preamble=preamble,
            file_meta=meta,
            is_implicit_VR=is_implicit,
            is_little_endian=is_little,
        )
    parsed.set_original_encoding(is_implicit, is_little, dataset._character_set)
    return parsed


def _with_syntax(dataset: Dataset) -> Dataset:
    """``dataset`` with the native transfer syntax of the encoding pydicom found when its file has no meta
    (older than PS3.10): without one, pydicom cannot decode the pixels."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "TransferSyntaxUID" not in dataset.file_meta:
        is_implicit, is_little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if is_implicit
            else ExplicitVRLittleEndian
            if is_little
            else ExplicitVRBigEndian
        )
    return dataset


def _inflated(stream: io.IOBase, name: str) -> io.BytesIO:
    """The data after a Deflated file's meta header, inflated up to ``MAX_INFLATED_BYTES`` (PS3.5 A.5).

    Raises:
        InputError: the data inflates past the cap.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(stream.read(), MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail:
        raise InputError(
            "Deflated Explicit VR Little Endian data inflates past "
            f"{MAX_INFLATED_BYTES:,} bytes; expected one CT slice "
            "(re-encode the file as Explicit VR Little Endian if it is genuine)",
            path=name,
        )
    return io.BytesIO(data)


def _raw_text(dataset: Dataset, keyword: str) -> str:
    """``keyword``'s value as text, read raw: pydicom's validation would print a malformed UID
    (PHI-bearing) in its warning."""
    element = dataset.get_item(keyword)
    if element is None or element.value is None:
        return ""
    value = element.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.strip("\x00 ")


def _check_is_ct_image(dataset: Dataset, name: str) -> None:
    from pydicom.uid import UID

    sop_class = UID(_raw_text(dataset, "SOPClassUID")).name or "unknown SOP class"
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        # pydicom stops quietly at the end of a file cut between elements: an image SOP
        # class without pixels is that.
        hint = ", so the file is probably truncated" if "Image Storage" in sop_class else ""
        raise InputError(f"no pixel data ({sop_class}{hint}); expected a CT image slice", path=name)
    modality = str(dataset.get("Modality") or "")
    if modality != "CT":
        raise InputError(f"modality is {modality or 'missing'} ({sop_class}); expected CT", path=name)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    photometric = str(dataset.get("PhotometricInterpretation") or "")
    if samples != 1:
        raise InputError(
            f"{samples} samples per pixel ({photometric}); expected a grayscale CT image", path=name
        )


def _frames(dataset: Dataset, n_frames: int) -> list[_Frame]:
    normal = _normal(dataset)
    instance = dataset.get("InstanceNumber")
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    frames = []
    for index in range(n_frames):
        if len(per_frame) == n_frames:
            position = _first(per_frame[index], "PlanePositionSequence", "ImagePositionPatient")
        else:
            position = dataset.get("ImagePositionPatient") if n_frames == 1 else None
        location = dataset.get("SliceLocation") if n_frames == 1 else None
        frames.append(
            _Frame(
                None
                if position is None or normal is None
                else float(np.dot(np.asarray(position, dtype=float), normal)),
                None if location is None else float(location),
                None if instance is None else (int(instance), index),
            )
        )
    return frames


def _slice_order(frames: list[list[_Frame]]) -> tuple[list[tuple[int, int]], np.ndarray | None]:
    """(file index, frame index) of each slice in order, and positions along the normal when
    the geometry is known."""
    keyed = [((f, i), frame) for f, file_frames in enumerate(frames) for i, frame in enumerate(file_frames)]
    for attribute in ("position_mm", "slice_location", "instance"):
        if all(getattr(frame, attribute) is not None for _, frame in keyed):
            keyed.sort(key=lambda item: getattr(item[1], attribute))
            break
    positions = (
        np.array([frame.position_mm for _, frame in keyed])
        if all(frame.position_mm is not None for _, frame in keyed)
        else None
    )
    return [key for key, _ in keyed], positions


def _common_slice_shape(headers: list[_Header], names: list[str], source: str) -> tuple[int, int]:
    shapes = [(header.rows, header.columns) for header in headers]
    for shape, name in zip(shapes, names, strict=True):
        if shape != shapes[0]:
            first = f"{Path(names[0]).name}: {shapes[0][1]}x{shapes[0][0]}"
            raise InputError(
                f"slices differ in size ({first}, {Path(name).name}: "
                f"{shape[1]}x{shape[0]}); expected one series",
                path=source,
            )
    return shapes[0]


def _hu_frames(dataset: Dataset, header: _Header, name: str) -> np.ndarray:
    """(F, H, W) float32 HU of one file's frames."""
    syntax = dataset.file_meta.get("TransferSyntaxUID", None)
    if str(syntax) in _FASTEST_DECODER:
        dataset.pixel_array_options(decoding_plugin=_FASTEST_DECODER[str(syntax)])
    try:
        stored = dataset.pixel_array
    except BaseException as error:
        if not _is_decoder_failure(error):
            raise
        syntax_name = getattr(syntax, "name", None) or "unknown transfer syntax"
        raise InputError(
            f"cannot decode pixel data ({syntax_name}: {type(error).__name__}: {error})", path=name
        ) from None
    expected = (len(header.frames), header.rows, header.columns)
    if stored.size != np.prod(expected):
        raise InputError(
            f"pixel data holds {stored.shape}, expected {expected} from the header (frames, rows, columns)",
            path=name,
        )
    slope, intercept = header.rescale[:, 0, None, None], header.rescale[:, 1, None, None]
    # One new array, then in place: each temporary of ``stored * slope + intercept`` cost a 512 x 512 slice
    # 0.1-0.2 ms (issue 16). The stored values are cast to float32 first, as ``astype`` did.
    hu = np.multiply(stored.reshape(expected), slope, dtype=np.float32)
    hu += intercept
    if (
        stored.dtype.kind == "f" and not np.isfinite(hu).all()
    ):  # integer pixels with finite rescale values are finite
        raise InputError(
            "NaN or infinite pixel values (float pixel data); expected finite CT values", path=name
        )
    return hu


def _is_decoder_failure(error: BaseException) -> bool:
    """Any ``Exception``, or the ``PanicException`` (a ``BaseException``) that the Rust RLE decoder raises
    through pyo3 on corrupt data."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


def _frame_rescales(dataset: Dataset, n_frames: int, name: str) -> np.ndarray:
    """(F, 2) float32 RescaleSlope and RescaleIntercept of each frame: top level (CT Image), else the shared
    or per-frame Pixel Value Transformation (Enhanced CT), else identity for MONOCHROME2.

    Raises:
        InputError: no rescale tags and not MONOCHROME2 (see ``read_dicom_series``).
    """
    shared = _item(_item(dataset, "SharedFunctionalGroupsSequence"), "PixelValueTransformationSequence")
    common = _slope_intercept(dataset, name) or _slope_intercept(shared, name)
    if common is not None:
        return np.tile(np.array([common], np.float32), (n_frames, 1))
    per_frame = [
        _slope_intercept(_item(item, "PixelValueTransformationSequence"), name)
        for item in dataset.get("PerFrameFunctionalGroupsSequence") or []
    ]
    if len(per_frame) == n_frames and all(value is not None for value in per_frame):
        return np.array(per_frame, np.float32)
    photometric = str(dataset.get("PhotometricInterpretation") or "")
    if photometric != "MONOCHROME2":
        raise InputError(
            f"{photometric or 'no photometric interpretation'} without "
            "RescaleSlope/RescaleIntercept; cannot tell Hounsfield units",
            path=name,
        )
    return np.tile(np.array([[1.0, 0.0]], np.float32), (n_frames, 1))


def _slope_intercept(dataset: Dataset | None, name: str) -> tuple[float, float] | None:
    if dataset is None or dataset.get("RescaleSlope") is None or dataset.get("RescaleIntercept") is None:
        return None
    values = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
    for keyword, value in zip(("RescaleSlope", "RescaleIntercept"), values, strict=True):
        if not math.isfinite(value):
            raise InputError(f"{keyword} is {value}; expected a finite number (PS3.3 C.11.1)", path=name)
    return values


def _item(dataset: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in ``dataset``, or None."""
    items = None if dataset is None else dataset.get(sequence)
    return items[0] if items else None


def _normal(dataset: Dataset) -> np.ndarray | None:
    orientation = dataset.get("ImageOrientationPatient")
    if orientation is None:
        orientation = _shared(dataset, "PlaneOrientationSequence", "ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return None
    row, column = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float)
    return np.cross(row, column)


def _shared(dataset: Dataset, sequence: str, keyword: str) -> object | None:
    """``keyword`` in the Shared Functional Groups (Enhanced CT), where classic CT files
    have it at the top level."""
    return _first(_item(dataset, "SharedFunctionalGroupsSequence"), sequence, keyword)


def _first(dataset: Dataset | None, sequence: str, keyword: str) -> object | None:
    item = _item(dataset, sequence)
    return None if item is None else item.get(keyword)


def _spacing_mm(header: _Header, positions: np.ndarray | None) -> tuple[float, float, float] | None:
    between = (
        float(np.median(np.abs(np.diff(positions))))
        if positions is not None and len(positions) > 1
        else header.slice_spacing_mm
    )
    if header.pixel_spacing_mm is None or between is None:
        return None
    return (between, *header.pixel_spacing_mm)


def _name(file: DicomSource) -> str:
    return file[0] if isinstance(file, tuple) else str(file)


def _default_source(files: Sequence[DicomSource]) -> str:
    if len(files) == 1 or isinstance(files[0], tuple):
        return _name(files[0])
    return str(files[0].parent)


def _slice_name(name: str, frame: int, n_frames: int) -> str:
    base = Path(name).name
    return f"{base}#{frame}" if n_frames > 1 else base
