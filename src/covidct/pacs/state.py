"""Which series were processed, persisted so that each is processed exactly once across restarts.

One JSON file, rewritten atomically (a temporary file in the same folder, fsynced, then renamed over
the old one), so a crash at any point leaves either the old state or the new one, never a torn file.
Series are keyed by ``privacy_key`` hashes of their UIDs: the file holds no UID or patient attribute.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from covidct.errors import InputError

STATE_VERSION = 1
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 600.0


class SeriesStatus(StrEnum):
    """DONE: results stored; SKIPPED: no result, with a reason (not chest CT, undecodable); RETRY."""

    DONE = "done"
    SKIPPED = "skipped"
    RETRY = "retry"


@dataclass(frozen=True)
class SeriesRecord:
    """What happened to one series: status, attempts, why it was skipped or retried, next try (epoch s)."""

    status: SeriesStatus
    attempts: int = 0
    reason: str = ""
    next_attempt_at: float = 0.0
    summary: str = ""


class ProcessedSeries:
    """The persisted map series key -> ``SeriesRecord``; every change is written before the call returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._records = self._load()

    def _load(self) -> dict[str, SeriesRecord]:
        if not self.path.exists():
            return {}
        try:
            values = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                key: SeriesRecord(**{**record, "status": SeriesStatus(record["status"])})
                for key, record in values["series"].items()
            }
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"not a covidct pacs state file ({type(error).__name__}: {error});"
                " move it away to start afresh",
                path=self.path,
            ) from None

    def get(self, key: str) -> SeriesRecord | None:
        return self._records.get(key)

    def is_due(self, key: str, *, now: float | None = None) -> bool:
        """True for a series never seen, or one waiting for a retry whose back-off has passed."""
        record = self._records.get(key)
        if record is None:
            return True
        return record.status is SeriesStatus.RETRY and record.next_attempt_at <= (
            time.time() if now is None else now
        )

    def mark(self, key: str, status: SeriesStatus, *, reason: str = "", summary: str = "") -> SeriesRecord:
        """Record an attempt; a RETRY waits ``BACKOFF_BASE_S * 2**(attempts-1)``, up to ``BACKOFF_MAX_S``."""
        previous = self._records.get(key)
        attempts = (previous.attempts if previous else 0) + 1
        delay = (
            min(BACKOFF_BASE_S * 2 ** (attempts - 1), BACKOFF_MAX_S) if status is SeriesStatus.RETRY else 0.0
        )
        record = SeriesRecord(status, attempts, reason, time.time() + delay if delay else 0.0, summary)
        self._records[key] = record
        self._save()
        return record

    def counts(self) -> dict[str, int]:
        """How many series are in each status."""
        counts = {status.value: 0 for status in SeriesStatus}
        for record in self._records.values():
            counts[record.status.value] += 1
        return counts

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        values = {
            "version": STATE_VERSION,
            "series": {key: {**asdict(r), "status": r.status.value} for key, r in self._records.items()},
        }
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(values, stream, indent=1)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
