"""Content hashes of input files: the same bytes give the same hash wherever the file lives or is named.

Pre-training records them (``backbone.json``) so that fine-tuning can refuse a test split whose images the
backbone already saw, even when the two runs name the files differently (issue 13).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(path: Path) -> str:
    """Hex SHA-256 of a manifest row's input: a file's bytes, or for a folder (a DICOM series row) the
    sorted hashes of the files directly in it, so renaming or moving the folder keeps its hash.
    """
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    hashes = sorted(file_sha256(child) for child in path.iterdir() if child.is_file())
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()
