"""Instances received over DICOM, kept on disk until their series is complete and handled.

A sender counts an instance as delivered once C-STORE answers success, so it is written to disk
(atomically: a temporary name, then a rename) before that answer; a crash then loses nothing, and
the series is handled after a restart. Folders and files are named by ``privacy_key`` hashes.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from pydicom import dcmread

from covidct.errors import InputError
from covidct.io.volume import privacy_key
from covidct.pacs.series import Instance


class Spool:
    """``root/<series key>/<instance key>.dcm`` for each received instance; what the listener asks of them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, series_uid: str, instance_uid: str, part10: bytes) -> Path:
        """Write one instance (Part-10 bytes) durably, return its path (a resent one replaces it)."""
        folder = self.root / privacy_key(series_uid)
        folder.mkdir(exist_ok=True)
        path = folder / f"{privacy_key(instance_uid)}.dcm"
        partial = folder / f".{path.name}.part"
        with partial.open("wb") as stream:
            stream.write(part10)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
        return path

    def quiet_series(self, quiet_s: float, *, now: float | None = None) -> list[Path]:
        """Series folders whose newest instance arrived ``quiet_s`` or more seconds ago (complete)."""
        now = time.time() if now is None else now
        quiet = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = self.files(folder)
            if files and now - max(f.stat().st_mtime for f in files) >= quiet_s:
                quiet.append(folder)
        return quiet

    @staticmethod
    def files(folder: Path) -> list[Path]:
        return sorted(folder.glob("[!.]*.dcm"))

    @staticmethod
    def series_uid(folder: Path) -> str:
        """The SeriesInstanceUID of a spooled series (read from its first instance's header)."""
        first = Spool.files(folder)[0]
        return str(
            dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID
        )

    @staticmethod
    def read(files: list[Path], *, max_bytes: int) -> list[Instance]:
        """The instances in ``files`` (one series) as ``(name, bytes)``; refused past ``max_bytes``, unread.

        Raises:
            InputError: the series is over ``max_bytes``.
        """
        total = sum(path.stat().st_size for path in files)
        if total > max_bytes:
            raise InputError(
                f"{len(files)} instances of {total / 2**20:.0f} MiB are over the {max_bytes / 2**20:.0f} MiB"
                " per-series budget; raise --max-series-mb to accept it",
                path=f"series {files[0].parent.name}",
            )
        return [(f"instance-{index:04d}", path.read_bytes()) for index, path in enumerate(files)]

    @staticmethod
    def remove(files: list[Path]) -> None:
        """Delete handled instances, then their folder if empty (instances that came meanwhile stay)."""
        for path in files:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            files[0].parent.rmdir()
