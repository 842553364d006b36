"""Decoded-voxel budgets: how much a request may hold decoded, counted from file headers before decoding.

Per-file caps (``max_pixels``, ``io.volume.MAX_VOXELS``) bound one file, not a request of many: a black
4096x4096 PNG is 16 KiB on the wire and 64 MiB as float32, so 16 of them in one upload asked a server for
1.1 GiB. Readers ``reserve`` a file's voxels from its header before they decode it; one request's budget
(``VoxelBudget``) refuses what would take it over its own limit, and a ``VoxelPool`` shared by every
request in flight refuses what would take all of them over the total.
"""

from __future__ import annotations

import threading

from covidct.errors import BusyError, UploadTooLargeError

# One image file's pixels (64 MP, 256 MiB as float32): larger images are refused from the header.
MAX_PIXELS = 64_000_000
# 768 slices of 512 x 512: a whole thin-slice (0.6 mm) chest CT, 768 MiB as float32 HU.
DEFAULT_REQUEST_VOXELS = 512 * 512 * 768
# Four such requests decoded at once: 3 GiB of float32.
DEFAULT_TOTAL_VOXELS = 4 * DEFAULT_REQUEST_VOXELS


class VoxelPool:
    """The voxels every request in flight may hold decoded together (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, voxels: int) -> bool:
        """Take ``voxels`` if they fit under the limit; False (nothing taken) if not."""
        with self._lock:
            if self._used + voxels > self.limit:
                return False
            self._used += voxels
            return True

    def give_back(self, voxels: int) -> None:
        with self._lock:
            self._used -= voxels


class VoxelBudget:
    """One request's decoded voxels: ``reserve`` before decoding a file, ``release``
    once its arrays are dropped.

    Use as a context manager so the voxels go back to the shared ``pool`` whatever happens. ``scope`` and
    ``fix`` word the error: what the budget is for, and what the user can do.
    """

    def __init__(
        self,
        limit: int,
        *,
        pool: VoxelPool | None = None,
        scope: str = "request",
        fix: str = "send fewer or smaller files",
    ) -> None:
        self.limit = limit
        self.pool = pool
        self.scope = scope
        self.fix = fix
        self.used = 0

    def reserve(self, name: str, voxels: int) -> None:
        """Count ``voxels`` (read from ``name``'s header) against this budget and the shared pool.

        Raises:
            UploadTooLargeError: this request would go over its own limit (the server answers 413).
            BusyError: requests in flight hold the shared pool (the server answers 503; retry later).
        """
        if self.used + voxels > self.limit:
            raise UploadTooLargeError(
                f"decoding it would bring this {self.scope} to {self.used + voxels:,} voxels, over the "
                f"{self.limit:,}-voxel budget per {self.scope}; {self.fix}",
                path=name,
            )
        if self.pool is not None and not self.pool.take(voxels):
            raise BusyError(
                "decoding it would take the server over its "
                f"{self.pool.limit:,}-voxel budget for the requests "
                "it is decoding; retry in a few seconds",
                path=name,
            )
        self.used += voxels

    def release(self) -> None:
        if self.pool is not None:
            self.pool.give_back(self.used)
        self.used = 0

    def __enter__(self) -> VoxelBudget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
