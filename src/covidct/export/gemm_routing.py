"""Route an int8 export's small convolutions to onnxruntime's AMX kernels, on CPUs that have AMX.

onnxruntime runs an int8 convolution whose weights have zero point 0 with its symmetric direct
convolution (AVX-512 VNNI on x86) and any other with its general int8 GEMM, which on a CPU with
AMX-INT8 (Intel Xeon from the 4th generation, on Linux) runs on the matrix tile unit. On ResNet-50
(2 cores, batch 32, onnxruntime 1.32; BENCHMARKS.md, issue 16) the GEMM is faster for convolutions
whose output is small, the 3x3 and reducing 1x1 convolutions of stages 2-4 (a pass 7.3 vs 9.4 ms a
slice), and slower for the large ones and everywhere on a CPU without AMX (11.5 vs 10.0 ms).

Storing the weights as q - 1 with zero point -1 changes no value: ``quantize_static``'s symmetric int8
weights lie in [-127, 127], so q - 1 fits in int8 and (q - 1) - (-1) = q. The outputs are
bit-identical; only the kernel onnxruntime picks changes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

# Output values per image up to which a convolution runs faster on the AMX GEMM: 28 x 28 x 128, stage 2's
# 3x3 convolutions at 224 px. The next size up in ResNet-50 (56 x 56 x 64, and every expanding 1x1
# convolution but stage 4's) runs faster on the direct convolution.
GEMM_MAX_OUTPUT_VALUES = 28 * 28 * 128
ROUTED_ZERO_POINT = -1


def cpu_has_amx_int8(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether onnxruntime's int8 GEMM runs on AMX here: Linux lists ``amx_tile`` and ``amx_int8`` among
    the CPU flags only when its kernel enables them (onnxruntime does not use AMX on macOS; elsewhere
    this answers False, which costs speed, never correctness)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return {"amx_tile", "amx_int8"} <= set(flags)


def route_small_convolutions_to_gemm(
    model: onnx.ModelProto, *, max_output_values: int = GEMM_MAX_OUTPUT_VALUES
) -> list[str]:
    """Give the int8 weights of every convolution with at most ``max_output_values`` output values per
    image zero point -1, in place; return the weights' names.

    A convolution is left as it is when its output shape is unknown, its weights are not symmetric
    int8 (zero point 0, no -128), where the shift would not be exact, or their tensors are shared.
    """
    shapes = {
        info.name: [dim.dim_value for dim in info.type.tensor_type.shape.dim]
        for info in shape_inference.infer_shapes(model).graph.value_info
    }
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    dequantized = {node.output[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    uses = Counter(name for node in model.graph.node for name in node.input)
    routed = []
    for conv in (node for node in model.graph.node if node.op_type == "Conv"):
        weights = dequantized.get(conv.input[1])
        output_shape = shapes.get(conv.output[0], [])
        if weights is None or len(weights.input) < 3 or len(output_shape) < 2 or not all(output_shape[1:]):
            continue
        if int(np.prod(output_shape[1:])) > max_output_values:
            continue
        q_tensor, zero_point_tensor = (
            initializers.get(name) for name in (weights.input[0], weights.input[2])
        )
        if (
            q_tensor is None
            or zero_point_tensor is None
            or uses[q_tensor.name] + uses[zero_point_tensor.name] > 2
        ):
            continue
        q, zero_point = numpy_helper.to_array(q_tensor), numpy_helper.to_array(zero_point_tensor)
        if q.dtype != np.int8 or q.min(initial=0) < -127 or zero_point.any():
            continue
        shifted = (q.astype(np.int16) + ROUTED_ZERO_POINT).astype(np.int8)
        q_tensor.CopyFrom(numpy_helper.from_array(shifted, q_tensor.name))
        zero_point_tensor.CopyFrom(
            numpy_helper.from_array(np.full_like(zero_point, ROUTED_ZERO_POINT), zero_point_tensor.name)
        )
        routed.append(q_tensor.name)
    return routed
