"""Turn a dataset (a folder of class subfolders, or a CSV manifest) into labelled rows."""

from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from covidct.errors import CovidctWarning, InputError, OptionError, did_you_mean
from covidct.io.discover import VolumeInput, VolumeKind, discover_images
from covidct.io.failures import InputFailure

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


DEFAULT_GROUP_COLUMN = "patient_id"
DEFAULT_SPLIT_COLUMN = "split"
DEFAULT_SOURCE_COLUMN = "source"


@dataclass(frozen=True)
class Columns:
    """Names of the manifest columns. Group and split are optional: None uses ``patient_id`` / ``split``
    when the CSV has them; a name given explicitly must exist. A ``source`` column, when present,
    names the site or dataset of each row (training balances the sources)."""

    path: str = "path"
    label: str = "label"
    group: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Sample:
    """One image: where it is, its class index, its patient/group id, its split and the site or dataset it
    came from (None if unknown)."""

    path: Path
    label: int
    group: str | None
    split: str | None
    source: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The labelled samples of a dataset and its class names; ``classes[positive_index]``
    is the positive class."""

    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    positive_index: int
    origin: Path

    @property
    def positive_class(self) -> str:
        return self.classes[self.positive_index]

    @property
    def has_patient_ids(self) -> bool:
        return all(sample.group is not None for sample in self.samples)

    @property
    def has_splits(self) -> bool:
        return all(sample.split is not None for sample in self.samples)

    def sha256(self) -> str:
        """Hash of the rows (relative paths, class names, groups, splits), independent
        of where the data lives."""
        digest = hashlib.sha256()
        root = self.origin if self.origin.is_dir() else self.origin.parent
        for sample in self.samples:
            relative = sample.path.relative_to(root) if sample.path.is_relative_to(root) else sample.path
            row = (relative.as_posix(), self.classes[sample.label], sample.group or "", sample.split or "")
            digest.update("\t".join(row).encode() + b"\n")
        return digest.hexdigest()

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Number of samples per class name, in one split or overall."""
        counts = dict.fromkeys(self.classes, 0)
        for sample in self.samples:
            if split is None or sample.split == split:
                counts[self.classes[sample.label]] += 1
        return counts

    def select(self, split: str) -> Manifest:
        """The same manifest restricted to one split."""
        return Manifest(
            tuple(s for s in self.samples if s.split == split), self.classes, self.positive_index, self.origin
        )


def read_manifest(
    data: str | Path, *, columns: Columns = Columns(), positive_class: str = "COVID"
) -> Manifest:
    """Read ``data``: a folder with one subfolder per class, or a CSV manifest (paths relative to the CSV).

    A row's path may be a 2-D image, or a CT volume: a DICOM file, a folder of DICOM files (its
    series, not its subfolders) or a NIfTI file. A volume's lung slices all become samples of that
    row (``covidct.data.dataset.decode_slices``); in a class folder, each NIfTI file and each folder
    holding DICOM files is one row.

    Raises:
        InputError: a missing dataset, a CSV without the required columns, an empty label or an
            unknown split value (the message names the row).
        OptionError: ``positive_class`` is not one of the classes found.
    """
    data = Path(data)
    if not data.exists():
        raise InputError(
            "dataset not found; expected a folder of class subfolders or a CSV manifest", path=data
        )
    if data.is_dir():
        rows = _rows_from_folder(data)
    elif data.suffix.lower() == ".csv":
        rows = _rows_from_csv(data, columns)
    else:
        raise InputError("expected a folder of class subfolders or a .csv manifest", path=data)
    if not rows:
        raise InputError("no images found", path=data)
    classes = tuple(sorted({row[1] for row in rows}))
    if len(classes) < 2:
        raise InputError(
            f"found a single class {classes}; training and evaluation need at least two", path=data
        )
    positive_index = _positive_index(classes, positive_class)
    samples = tuple(
        Sample(path, classes.index(label), group, split, source) for path, label, group, split, source in rows
    )
    return Manifest(samples, classes, positive_index, data)


@dataclass(frozen=True)
class UnlabelledInputs:
    """Inputs without labels (self-supervised pre-training): each row's path and split (None if unknown)."""

    paths: tuple[Path, ...]
    splits: tuple[str | None, ...]
    origin: Path

    def without_test(self) -> tuple[tuple[Path, ...], int]:
        """The paths of rows not in the test split, and how many test rows were left out."""
        kept = tuple(path for path, split in zip(self.paths, self.splits, strict=True) if split != "test")
        return kept, len(self.paths) - len(kept)


def read_unlabelled(data: str | Path, *, columns: Columns = Columns()) -> UnlabelledInputs:
    """Read ``data`` for use without labels: every image or volume under a folder (in class subfolders or
    not), or every row of a CSV manifest (a label column may be there; it is not read).

    The CSV's split column is read as ``read_manifest`` reads it, so a caller can leave the test rows out.

    Raises:
        InputError: a missing dataset, a CSV without its path column (or a named split column), an empty
            path, an unknown split value, or no images at all.
    """
    data = Path(data)
    if not data.exists():
        raise InputError("dataset not found; expected a folder of images or a CSV manifest", path=data)
    if data.is_dir():
        found = discover_images([data])
        _warn_unused(found.failures + found.skipped)
        rows = [(path, None) for path in found.paths + _volume_paths(found.volumes)]
    elif data.suffix.lower() == ".csv":
        rows = [(row[0], row[3]) for row in _rows_from_csv(data, columns, is_labelled=False)]
    else:
        raise InputError("expected a folder of images or a .csv manifest", path=data)
    if not rows:
        raise InputError("no images found", path=data)
    return UnlabelledInputs(tuple(row[0] for row in rows), tuple(row[1] for row in rows), data)


def _positive_index(classes: tuple[str, ...], positive_class: str) -> int:
    if positive_class in classes:
        return classes.index(positive_class)
    hint = did_you_mean(positive_class, classes)
    raise OptionError(
        f"positive_class '{positive_class}' is not one of the classes {list(classes)}{hint}",
        parameters=("positive_class",),
    )


def _rows_from_folder(root: Path) -> list[tuple[Path, str, None, None, None]]:
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = discover_images([class_dir])
        rows += [
            (path, class_dir.name, None, None, None) for path in found.paths + _volume_paths(found.volumes)
        ]
        _warn_unused(found.failures + found.skipped)
    return rows


def _warn_unused(unused: list[InputFailure]) -> None:
    for failure in unused:
        warnings.warn(f"{failure.path}: {failure.reason}; not used", CovidctWarning, stacklevel=5)


def _volume_paths(volumes: list[VolumeInput]) -> list[Path]:
    """One sample path per NIfTI file and per folder of DICOM series (a folder's series are read together)."""
    paths = [
        volume.files[0] if volume.kind is VolumeKind.NIFTI else volume.files[0].parent for volume in volumes
    ]
    return list(dict.fromkeys(paths))


def _rows_from_csv(
    csv_path: Path, columns: Columns, *, is_labelled: bool = True
) -> list[tuple[Path, str, str | None, str | None, str | None]]:
    """(path, label, group, split, source) per row; without ``is_labelled`` the label is not read ("")."""
    label_column = [(columns.label, "--label-col")] if is_labelled else []
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for required, option in [(columns.path, "--path-col"), *label_column]:
            if required not in header:
                raise InputError(
                    f"no column '{required}' (columns: {header}); name yours with {option}", path=csv_path
                )
        for named, option in ((columns.group, "--group-col"), (columns.split, "--split-col")):
            if named is not None and named not in header:
                raise InputError(
                    f"no column '{named}' (columns: {header}); fix {option} or leave it out", path=csv_path
                )
        group_col = columns.group or (DEFAULT_GROUP_COLUMN if DEFAULT_GROUP_COLUMN in header else None)
        split_col = columns.split or (DEFAULT_SPLIT_COLUMN if DEFAULT_SPLIT_COLUMN in header else None)
        source_col = DEFAULT_SOURCE_COLUMN if DEFAULT_SOURCE_COLUMN in header else None
        rows = []
        for line, record in enumerate(reader, start=2):
            label = (record[columns.label] or "").strip() if is_labelled else ""
            path = (record[columns.path] or "").strip()
            checked = [(label, "label", columns.label)] if is_labelled else []
            for value, kind, column in [*checked, (path, "path", columns.path)]:
                if not value:
                    raise InputError(f"line {line}: empty {kind} in column '{column}'", path=csv_path)
            group = ((record[group_col] or "").strip() or None) if group_col else None
            split = _parse_split(record[split_col], csv_path, line) if split_col else None
            source = ((record[source_col] or "").strip() or None) if source_col else None
            rows.append((csv_path.parent / path, label, group, split, source))
    return rows


def _parse_split(value: str | None, csv_path: Path, line: int) -> str:
    split = _SPLIT_ALIASES.get((value or "").strip().lower())
    if split is None:
        raise InputError(f"line {line}: split '{value}' is not one of train, val, test", path=csv_path)
    return split
