"""Hounsfield units -> the [0, 1] grayscale the model takes, through a display window.

One function for training data and inference alike, so a DICOM or NIfTI study is seen the same way
in both. 8-bit PNG/JPEG slices are taken as already windowed and never pass through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from covidct.errors import OptionError

if TYPE_CHECKING:  # the CLI declares --window from this module: it must not import numpy at start-up
    import numpy as np


@dataclass(frozen=True)
class HuWindow:
    """A CT display window: HU in [level - width/2, level + width/2] maps linearly onto [0, 1].

    The default lung window (level -600, width 1500: -1350 to 150 HU) shows ground-glass opacity and
    consolidation, the COVID-19 findings, against aerated lung.
    """

    level: float = -600.0
    width: float = 1500.0

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise OptionError(f"window width must be positive; got {self.width:g}", parameters=("window",))

    @classmethod
    def parse(cls, text: str) -> HuWindow:
        """``"L,W"`` (for example ``"-600,1500"``) -> ``HuWindow``.

        Raises:
            OptionError: not two numbers separated by a comma, or a width that is not positive.
        """
        parts = text.split(",")
        try:
            level, width = (float(part) for part in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            level = width = None
        if level is None:
            raise OptionError(
                f"window must be LEVEL,WIDTH in HU, for example -600,1500; got {text!r}",
                parameters=("window",),
            )
        return cls(level, width)

    def __str__(self) -> str:
        return f"{self.level:g},{self.width:g}"


LUNG_WINDOW = HuWindow()


def window_hu(hu: np.ndarray, window: HuWindow = LUNG_WINDOW) -> np.ndarray:
    """Return ``hu`` (any shape, HU) windowed to float32 in [0, 1]."""
    low = window.level - window.width / 2.0
    # One new array, then in place: a fresh array per step cost a 150-slice series 0.5 s in page faults.
    # Python floats do not widen float32 (NEP 50), so the arithmetic is float32 throughout.
    gray = hu.astype("float32", copy=False) - low
    gray /= window.width
    return gray.clip(0.0, 1.0, out=gray)
