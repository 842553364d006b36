"""What each result says about the model that made it, and the UIDs that make storing a result idempotent."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from covidct.model.card import CARD_FILE
from covidct.model.integrity import file_sha256

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


@dataclass(frozen=True)
class ModelIdentity:
    """The model a result came from: SHA-256 of its card (model.json) and weights, covidct version."""

    card_sha256: str
    checkpoint_sha256: str
    covidct_version: str

    @classmethod
    def of(cls, model_dir: Path, *, checkpoint_sha256: str, covidct_version: str) -> ModelIdentity:
        return cls(file_sha256(Path(model_dir) / CARD_FILE), checkpoint_sha256, covidct_version)


@dataclass(frozen=True)
class ResultUids:
    """UIDs of the result series and instances, derived from the source series and the model card.

    Deterministic on purpose (``2.25.`` UIDs from a hash, PS3.5 B.2): a retry after a crash between
    storing and recording the store sends the very same instances, which the PACS keeps once, so a
    series never gets two results from one model.
    """

    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str

    @classmethod
    def for_series(cls, source_series_uid: str, model: ModelIdentity) -> ResultUids:
        def uid(role: str) -> str:
            text = f"covidct\n{source_series_uid}\n{model.card_sha256}\n{role}"
            digest = hashlib.sha256(text.encode()).digest()
            # A 128-bit number under 2.25, the root of UUID-derived UIDs (PS3.5 B.2).
            return f"2.25.{int.from_bytes(digest[:16], 'big')}"

        return cls(uid("sr series"), uid("sr instance"), uid("sc series"), uid("sc instance"))
