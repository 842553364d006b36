"""Walk the inputs a user names (files and folders) into image paths, recording what cannot be used."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from covidct.io.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class InputFailure:
    """An input that produced no result, and why (shown in the summary table; never silent)."""

    path: str
    reason: str


@dataclass(frozen=True)
class SkippedFile(InputFailure):
    """A file inside a folder left out for its type: listed for the user, but not a failure."""


@dataclass(frozen=True)
class Discovered:
    """Image files to process, inputs that failed, and files skipped for their type (listed, not failed)."""

    paths: list[Path]
    failures: list[InputFailure]
    skipped: list[InputFailure]


def discover_images(inputs: Iterable[str | Path]) -> Discovered:
    """Expand files and folders (recursively, sorted, symlink loops safe) into image paths.

    A named file is used whatever its extension (the decoder decides); inside folders, only files
    with an image extension are taken and the others are listed as skipped.
    """
    paths: list[Path] = []
    failures: list[InputFailure] = []
    skipped: list[InputFailure] = []
    for item in iter_inputs(inputs):
        if isinstance(item, Path):
            paths.append(item)
        elif isinstance(item, SkippedFile):
            skipped.append(item)
        else:
            failures.append(item)
    return Discovered(paths, failures, skipped)


def iter_inputs(inputs: Iterable[str | Path]) -> Iterator[Path | InputFailure]:
    """Yield, in ``discover_images`` order, each image path, failed input and ``SkippedFile`` as it is found.

    Nothing is collected: memory holds one folder's listing at a time, so a folder tree of millions
    of slices can be streamed.
    """
    for item in map(Path, inputs):
        if item.is_dir():
            yield from _walk(item)
        elif item.is_file():
            yield item
        else:
            yield InputFailure(str(item), "no such file or folder")


def count_images(inputs: Iterable[str | Path]) -> int:
    """The number of image paths ``iter_inputs`` yields (one walk, nothing kept): a total for progress bars."""
    return sum(isinstance(item, Path) for item in iter_inputs(inputs))


def _walk(root: Path) -> Iterator[Path | InputFailure]:
    """Walk ``root`` following symlinked folders, each real folder once (so a symlink loop ends)."""
    errors: list[InputFailure] = []

    def on_error(error: OSError) -> None:
        errors.append(InputFailure(str(error.filename or root), f"cannot read folder ({error.strerror})"))

    visited: set[tuple[int, int]] = set()
    for folder, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        yield from errors
        errors.clear()
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in visited:
            yield InputFailure(folder, "folder already visited through another path (symlink loop); not walked again")
            dirnames.clear()
            continue
        visited.add((status.st_dev, status.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(folder) / name
            if name.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
            else:
                yield SkippedFile(str(path), f"not an image file type ({path.suffix or 'no extension'})")
    yield from errors
