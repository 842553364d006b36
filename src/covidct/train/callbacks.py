"""Hooks through which training reports progress; the CLI draws rich progress bars with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from covidct.data.audit import AuditResult


class TrainCallbacks:
    """No-op hooks; subclass and override what you want to show."""

    def on_stage(self, message: str) -> None:
        """A new stage starts (decoding, feature extraction, calibration...)."""

    def decode_progress(self, description: str) -> Callable[[int, int], None] | None:
        """Return a (done, total) callback for decoding a split, or None."""
        return None

    def on_audit(self, audit: AuditResult) -> None:
        """The data audit (shortcuts, duplicates, leaks, balance) finished; training goes on regardless."""

    def on_step(self, step: int, steps: int, loss: float) -> None:
        """A training step finished."""

    def on_epoch_end(self, record: dict, epochs: int) -> None:
        """An epoch finished; ``record`` is its train_log.csv row."""
