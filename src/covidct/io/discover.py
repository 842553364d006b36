"""Walk the inputs a user names (files and folders) into image paths, recording what cannot be used."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from covidct.io.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class InputFailure:
    """An input that produced no result, and why (shown in the summary table; never silent)."""

    path: str
    reason: str


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
    for item in map(Path, inputs):
        if item.is_dir():
            _walk(item, paths, failures, skipped)
        elif item.is_file():
            paths.append(item)
        else:
            failures.append(InputFailure(str(item), "no such file or folder"))
    return Discovered(paths, failures, skipped)


def _walk(root: Path, paths: list[Path], failures: list[InputFailure], skipped: list[InputFailure]) -> None:
    """Walk ``root`` following symlinked folders, each real folder once (so a symlink loop ends)."""

    def on_error(error: OSError) -> None:
        failures.append(InputFailure(str(error.filename or root), f"cannot read folder ({error.strerror})"))

    visited: set[tuple[int, int]] = set()
    for folder, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in visited:
            failures.append(InputFailure(folder, "folder already visited through another path (symlink loop); not walked again"))
            dirnames.clear()
            continue
        visited.add((status.st_dev, status.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(folder) / name
            if name.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
            else:
                skipped.append(InputFailure(str(path), f"not an image file type ({path.suffix or 'no extension'})"))
