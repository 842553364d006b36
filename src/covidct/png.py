"""PNG encoding of what covidct shows people: slices and Grad-CAM overlays in reports, the
audit and API answers."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def gray_image(gray: np.ndarray) -> Image.Image:
    """An 8-bit grayscale image of a (H, W) float slice in [0, 1] (values outside are clipped)."""
    return Image.fromarray((np.clip(gray, 0.0, 1.0) * 255).round().astype(np.uint8), mode="L")


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG, in memory (nothing is written to disk)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
