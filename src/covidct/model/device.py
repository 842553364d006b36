"""Where the network runs and in which precision: CUDA when present, else the CPU with bf16 if it has it.

torch is imported by the functions that use it, not by this module: the ONNX engines name a ``Device``
but never need torch (issue 16, a light inference path).
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import TYPE_CHECKING

from covidct.errors import OptionError

if TYPE_CHECKING:
    import torch


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def resolve_device(device: Device | str) -> torch.device:
    """Return the torch device for ``device``; ``auto`` picks CUDA when available.

    Raises:
        OptionError: ``cuda`` was asked for on a machine without a usable GPU.
    """
    import torch

    device = Device(device)
    if device is Device.CUDA and not torch.cuda.is_available():
        raise OptionError(
            "device cuda was asked for, but no CUDA GPU is available; use device cpu or auto",
            parameters=("device",),
        )
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(device))


def supports_bf16(device: torch.device) -> bool:
    """True where bf16 autocast is fast: CUDA GPUs with bf16, or CPUs that compute in bf16 (AVX512-BF16 or
    AMX).

    Not what oneDNN calls bf16 support (``torch.ops.mkldnn._is_mkldnn_bf16_supported``), which includes
    plain AVX-512 where it converts to fp32 and back around every op: on such an Intel Xeon (2 cores, no
    AVX512-BF16) a ResNet-50 took 2.0x as long a training step and 2.8x as long a forward pass in bf16 as in
    fp32 (``bench/bf16.py``, BENCHMARKS.md).
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
