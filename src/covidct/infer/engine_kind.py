"""The ``--engine`` choice, apart from the engines themselves: the CLI declares its options from this
without importing numpy or a runtime (``covidct --help`` stays instant)."""

from __future__ import annotations

from enum import StrEnum

from covidct.errors import OptionError, did_you_mean


class Engine(StrEnum):
    """Which runtime computes the logits: torch, or onnxruntime on the fp32 or int8 ONNX export."""

    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"

    @classmethod
    def _missing_(cls, value: object) -> Engine:
        names = [engine.value for engine in cls]
        hint = did_you_mean(value, names)
        raise OptionError(f"--engine must be {', '.join(names[:-1])} or {names[-1]}; got '{value}'{hint}")

    @property
    def onnx_file(self) -> str:
        """The file this engine reads in the model directory (and ``covidct export`` writes by default)."""
        return {Engine.ONNX: "model.onnx", Engine.ONNX_INT8: "model.int8.onnx"}[self]

    @property
    def export_command(self) -> str:
        return f"covidct export MODEL_DIR --format onnx{' --int8' if self is Engine.ONNX_INT8 else ''}"
