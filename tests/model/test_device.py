"""Precision choice: bf16 autocast only where the hardware computes in bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from covidct.model.device import supports_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [
        pytest.param(False, False, False, id="avx512-without-bf16"),
        pytest.param(True, False, True, id="avx512-bf16"),
        pytest.param(False, True, True, id="amx"),
    ],
)
def test_a_cpu_gets_bf16_only_where_it_computes_in_bf16(monkeypatch, avx512_bf16, amx, expected):
    """oneDNN reports bf16 support on plain AVX-512 too, where it emulates bf16 slower than fp32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert supports_bf16(CPU) is expected


def test_this_cpu_gets_bf16_exactly_when_linux_lists_a_bf16_unit_among_its_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo (not Linux): the CPU flags cannot be read independently of torch")
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    if not flags:
        pytest.skip("/proc/cpuinfo lists no flags on this architecture")
    assert supports_bf16(CPU) is bool({"avx512_bf16", "amx_tile"} & set(flags))
