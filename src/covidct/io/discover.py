"""Walk the inputs a user names (files and folders) into 2-D images and CT volumes,
recording what cannot be used.

A 2-D image file (PNG, JPEG, ...) is one input; a NIfTI file is one volume; DICOM files are grouped
by SeriesInstanceUID, one volume per series, so a folder of a study's slices gives one result per series.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from covidct.errors import LinkOutsideTreeWarning
from covidct.io.dicom import group_dicom_series, is_dicom
from covidct.io.failures import InputFailure, SkippedFile
from covidct.io.images import IMAGE_SUFFIXES
from covidct.io.nifti import is_nifti


class VolumeKind(StrEnum):
    """The file format of a CT volume."""

    DICOM = "dicom"
    NIFTI = "nifti"


@dataclass(frozen=True)
class VolumeInput:
    """The files of one CT volume: a DICOM series (one or more files, maybe multi-frame) or a NIfTI file.

    Attributes:
        kind: ``VolumeKind.DICOM`` or ``VolumeKind.NIFTI``.
        source: what to show for it: the file, or the series' folder (with "(series i of n)" when the
            folder holds several series).
        files: its files, in the order found (the reader orders the slices).
    """

    kind: VolumeKind
    source: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Discovered:
    """Image files and volumes to process, inputs that failed, and files skipped for their
    type (listed, not failed)."""

    paths: list[Path]
    failures: list[InputFailure]
    skipped: list[InputFailure]
    volumes: list[VolumeInput] = field(default_factory=list)


def discover_images(inputs: Iterable[str | Path]) -> Discovered:
    """Expand files and folders (recursively, sorted, symlink loops safe) into image paths and volumes.

    A named file is used whatever its extension (the decoder decides); inside folders, only image,
    NIfTI and DICOM files are taken and the others are listed as skipped, FIFOs, sockets and devices
    too (opening a FIFO would wait for ever). Symlinks are followed; those leading out of the folder
    are named in one ``LinkOutsideTreeWarning`` per folder.
    """
    found = Discovered([], [], [], [])
    for item in iter_inputs(inputs):
        if isinstance(item, Path):
            found.paths.append(item)
        elif isinstance(item, VolumeInput):
            found.volumes.append(item)
        elif isinstance(item, SkippedFile):
            found.skipped.append(item)
        else:
            found.failures.append(item)
    return found


def iter_inputs(inputs: Iterable[str | Path]) -> Iterator[Path | VolumeInput | InputFailure]:
    """Yield, in ``discover_images`` order, each image path, volume, failed input and
    ``SkippedFile`` as it is found.

    Nothing is collected but one folder's listing and its DICOM file names, so a folder tree of
    millions of slices can be streamed. DICOM files named one by one (``scan/*.dcm``) are grouped
    by series too, after the other named inputs.
    """
    named_dicom: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            yield from _walk(item)
        elif not item.is_file():
            yield InputFailure(str(item), _not_regular(item) or "no such file or folder")
        elif is_nifti(item.name):
            yield VolumeInput(VolumeKind.NIFTI, str(item), (item,))
        elif is_dicom(item):
            named_dicom.append(item)
        else:
            yield item
    yield from _series_inputs(named_dicom, folder=None)


def count_images(inputs: Iterable[str | Path]) -> int:
    """The number of image paths and volumes ``iter_inputs`` yields (one walk, nothing kept): a
    total for progress bars."""
    return sum(isinstance(item, Path | VolumeInput) for item in iter_inputs(inputs))


def _walk(root: Path) -> Iterator[Path | VolumeInput | InputFailure]:
    """Walk ``root`` following symlinked folders, each real folder once (so a symlink loop ends)."""
    errors: list[InputFailure] = []

    def on_error(error: OSError) -> None:
        errors.append(InputFailure(str(error.filename or root), f"cannot read folder ({error.strerror})"))

    visited: set[tuple[int, int]] = set()
    outside: list[str] = []
    top = root.resolve()
    for folder, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        yield from errors
        errors.clear()
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in visited:
            yield InputFailure(
                folder, "folder already visited through another path (symlink loop); not walked again"
            )
            dirnames.clear()
            continue
        visited.add((status.st_dev, status.st_ino))
        dirnames.sort()
        outside += [
            f"{Path(folder) / name} -> {target}"
            for name in dirnames
            if (target := _outside(Path(folder) / name, top))
        ]
        dicom_files = []
        for name in sorted(filenames):
            path = Path(folder) / name
            if name.startswith("."):
                continue
            if reason := _not_regular(path):
                yield SkippedFile(str(path), reason)
                continue
            if target := _outside(path, top):
                outside.append(f"{path} -> {target}")
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
            elif is_nifti(name):
                yield VolumeInput(VolumeKind.NIFTI, str(path), (path,))
            elif is_dicom(path):  # a .dcm name, or the DICM marker in files named by UID or with no extension
                dicom_files.append(path)
            else:
                yield SkippedFile(str(path), f"not an image file type ({path.suffix or 'no extension'})")
        yield from _series_inputs(dicom_files, folder=folder)
    yield from errors
    if outside:
        shown = "; ".join(outside[:3]) + ("; ..." if len(outside) > 3 else "")
        warnings.warn(
            f"{root}: {len(outside)} symlink(s) lead out of the folder and were followed: {shown}",
            LinkOutsideTreeWarning,
            stacklevel=2,
        )


def _not_regular(path: Path) -> str | None:
    """Why ``path`` (its target, for a symlink) is not a regular file to read, or None when
    it is one or is missing."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"{kind}, not a regular file; skipped"


def _outside(path: Path, top: Path) -> Path | None:
    """The target of the symlink ``path`` when it lies outside ``top`` (resolved), else None."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    return None if target.is_relative_to(top) else target


def _series_inputs(files: Sequence[Path], *, folder: str | None) -> Iterator[VolumeInput | InputFailure]:
    """One ``VolumeInput`` per DICOM series in ``files`` (headers only), then the files whose
    header is unreadable, each saying that the series beside it are read without it (its slices are
    missing from their study)."""
    groups, failures = group_dicom_series(files)
    sources = []
    for index, group in enumerate(groups, start=1):
        base = folder if folder is not None else str(group[0] if len(group) == 1 else group[0].parent)
        sources.append(base if len(groups) == 1 else f"{base} (series {index} of {len(groups)})")
        yield VolumeInput(VolumeKind.DICOM, sources[-1], tuple(group))
    left_out = (
        f"; left out of {', '.join(sources)}, which {'is' if len(sources) == 1 else 'are'} read without it"
        if sources
        else ""
    )
    yield from (InputFailure(failure.path, failure.reason + left_out) for failure in failures)
