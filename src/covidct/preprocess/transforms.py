"""Image -> model input, the same way for every class, in training, evaluation and inference.

The model card stores a ``Preprocessing`` value; inference rebuilds the pipeline from it, so nothing
downstream hard-codes the size or the normalisation. numpy and Pillow only: the ONNX engines prepare
their inputs without torch (training's augmentation is in ``preprocess.augment``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from covidct.errors import OptionError
from covidct.preprocess.window import LUNG_WINDOW, HuWindow

Array = TypeVar("Array")  # a numpy array, or a torch tensor on any device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded grayscale slice becomes a (3, size, size) network input.

    The site steps (see ``covidct.preprocess.site``) run before the resize, in this order:
    ``fill_padding``, ``remove_annotations``, ``crop_field`` (``resize`` then applies to the crop),
    ``circular_field``, ``standardise_intensity``. They default to off, so a card written before they
    existed loads as the pipeline it was trained with.
    """

    image_size: int = 224
    resize: str = (
        "the whole image (the body crop when crop_field), "
        "bilinear with antialiasing, to a square (aspect not kept)"
    )
    channels: str = "grayscale in [0, 1] replicated to 3 channels"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_field: bool = False
    remove_annotations: bool = False
    standardise_intensity: bool = False
    # Off in cards written before it existed (``covidct.preprocess.site.fill_padding``); runs first.
    fill_padding: bool = False
    # Off in cards written before it existed (``covidct.preprocess.site.keep_circular_field``).
    circular_field: bool = False
    # DICOM/NIfTI slices are windowed from HU with this window (covidct.preprocess.window) before the steps
    # above, in training and inference alike; 8-bit PNG/JPEG slices are already windowed and skip it.
    hu_window: HuWindow = LUNG_WINDOW

    def to_dict(self) -> dict:
        """The model card's ``preprocessing`` object: JSON values, the window as its "level,width" text."""
        return {**asdict(self), "hu_window": str(self.hu_window)}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        """Read ``to_dict``'s object; a card from before the HU window loads with the lung window.

        Raises:
            ValueError: the card's ``hu_window`` is not "level,width" with a positive width.
        """
        values = {**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])}
        if "hu_window" in values:
            try:
                values["hu_window"] = HuWindow.parse(values["hu_window"])
            except OptionError as error:
                raise ValueError(f"preprocessing.hu_window: {error.reason}") from None
        return cls(**values)


def resize_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a (H, W) float32 [0, 1] slice to (size, size) float32, antialiased (PIL's bilinear filter)."""
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


def normalize(gray: Array, preprocessing: Preprocessing) -> Array:
    """Map (N, 1, S, S) grayscale in [0, 1] to the (N, 3, S, S) normalised network input, in ``gray``'s dtype.

    One function for numpy arrays (the ONNX engines) and torch tensors on any device (training, the
    torch engine, Grad-CAM): broadcasting the one channel against the three means replicates it.
    """
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1)
    if isinstance(gray, np.ndarray):
        mean, std = mean.astype(gray.dtype), std.astype(gray.dtype)
        # Into one array, in place: the temporary of ``(gray - mean) / std`` cost the ONNX engines' calling
        # thread, which the forward pass waits for, 50 ms a batch of 32 in page faults (issue 16).
        normalised = np.empty(np.broadcast_shapes(gray.shape, mean.shape), gray.dtype)
        np.subtract(gray, mean, out=normalised)
        return np.divide(normalised, std, out=normalised)
    # a torch tensor: the constants follow its dtype and device
    mean, std = gray.new_tensor(mean), gray.new_tensor(std)
    return (gray - mean) / std
