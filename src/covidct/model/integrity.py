"""The hashes that tie a model directory's files together, checked from their bytes (no torch needed)."""

from __future__ import annotations

import re
from pathlib import Path

from covidct.data.content_hash import file_sha256
from covidct.errors import ModelDirError
from covidct.model.card import ModelCard

__all__ = ["WEIGHTS_FILE", "checked_weights_path", "file_sha256"]

WEIGHTS_FILE = "model.safetensors"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def checked_weights_path(model_dir: Path, card: ModelCard) -> Path:
    """``model_dir/model.safetensors``, after checking its bytes against the card's ``checkpoint_sha256``.

    Raises:
        ModelDirError: the file is missing, the card lacks its hash, or its hash differs from the card's.
    """
    weights_path = Path(model_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelDirError(f"no {WEIGHTS_FILE} beside model.json", path=model_dir)
    if not (isinstance(card.checkpoint_sha256, str) and _SHA256.match(card.checkpoint_sha256)):
        # Without the hash the weights could be anyone's: a blank one used to skip the check (issue 15).
        raise ModelDirError(
            f"checkpoint_sha256 in model.json is {card.checkpoint_sha256!r}; "
            "expected the 64 hex digits of the SHA-256 "
            f"of {WEIGHTS_FILE} that 'covidct train' writes",
            path=model_dir,
        )
    if file_sha256(weights_path) != card.checkpoint_sha256:
        raise ModelDirError(
            f"{WEIGHTS_FILE} does not match the hash in model.json ({card.checkpoint_sha256[:12]}...); "
            "the directory was modified or mixes two models",
            path=model_dir,
        )
    return weights_path
