"""Helpers for the server tests: upload bodies and in-memory images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    """Encode a uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx ``files=`` for ``(name, content)`` pairs, each a part named 'files'."""
    return [("files", (name, content, "application/octet-stream")) for name, content in files]
