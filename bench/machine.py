"""What machine a benchmark ran on, recorded in every bench/results/*.json (figures
mean nothing without it)."""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import torch

from covidct.model.device import resolve_device, supports_bf16


def machine_facts(packages: tuple[str, ...] = ("torch", "torchvision", "covidct")) -> dict:
    """Processor, cores, device, bf16 support, GPU, library versions, load average and date."""
    device = resolve_device("auto")
    return {
        "processor": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "bf16": supports_bf16(device),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        **{name: version(name) for name in packages},
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
