"""gemm_routing: small int8 convolutions get zero point -1 with the same weight values, so onnxruntime's
outputs do not change; large ones, and weights the shift cannot carry, are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from covidct.export.gemm_routing import cpu_has_amx_int8, route_small_convolutions_to_gemm

SIZE = 8


class _Reader(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._batches = iter(
            [{"x": rng.standard_normal((2, 8, SIZE, SIZE)).astype(np.float32)} for _ in range(4)]
        )

    def get_next(self):
        return next(self._batches, None)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory) -> onnx.ModelProto:
    """Two convolutions quantized as covidct's export is (QDQ, symmetric per-channel int8 weights): a 3x3
    with 8 x 8 x 8 = 512 output values an image, then a 1x1 with 8 x 8 x 32 = 2048."""
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)
        for name, shape in (("small.weight", (8, 8, 3, 3)), ("large.weight", (32, 8, 1, 1)))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "small.weight"], ["small"], pads=[1, 1, 1, 1], name="small"),
            helper.make_node("Relu", ["small"], ["small_relu"]),
            helper.make_node("Conv", ["small_relu", "large.weight"], ["y"], name="large"),
        ],
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, SIZE, SIZE])],
        weights,
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    directory = tmp_path_factory.mktemp("gemm_routing")
    onnx.save(fp32, directory / "fp32.onnx")
    quantize_static(
        str(directory / "fp32.onnx"),
        str(directory / "int8.onnx"),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    return onnx.load(str(directory / "int8.onnx"))


def _weights(model: onnx.ModelProto, conv: str) -> tuple[np.ndarray, np.ndarray]:
    """A convolution's int8 weights and their zero points."""
    made_by = {node.output[0]: node for node in model.graph.node}
    dequantize = made_by[next(node for node in model.graph.node if node.name == conv).input[1]]
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    return initializers[dequantize.input[0]], initializers[dequantize.input[2]]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_small_convolutions_get_zero_point_minus_one_with_the_same_weights_and_outputs(int8_model):
    routed = onnx.ModelProto()
    routed.CopyFrom(int8_model)

    names = route_small_convolutions_to_gemm(routed, max_output_values=1000)

    (small_q, small_zp), (large_q, large_zp) = (_weights(int8_model, conv) for conv in ("small", "large"))
    (new_small_q, new_small_zp), (new_large_q, new_large_zp) = (
        _weights(routed, conv) for conv in ("small", "large")
    )
    assert names == ["small.weight_quantized"]
    assert small_zp.dtype == np.int8 and not small_zp.any() and (new_small_zp == -1).all()
    np.testing.assert_array_equal(new_small_q.astype(int) - new_small_zp[:, None, None, None], small_q)
    np.testing.assert_array_equal(new_large_q, large_q)
    np.testing.assert_array_equal(new_large_zp, large_zp)
    x = np.random.default_rng(2).standard_normal((3, 8, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_array_equal(_run(routed, x), _run(int8_model, x))


def test_nothing_is_routed_over_the_limit_of_unknown_size_or_where_the_shift_would_change_a_weight(
    int8_model,
):
    unchanged = onnx.ModelProto()
    unchanged.CopyFrom(int8_model)
    assert route_small_convolutions_to_gemm(unchanged, max_output_values=511) == []

    with_minus_128 = onnx.ModelProto()
    with_minus_128.CopyFrom(int8_model)
    tensor = next(t for t in with_minus_128.graph.initializer if t.name == "small.weight_quantized")
    q = numpy_helper.to_array(tensor).copy()
    q.flat[0] = -128
    tensor.CopyFrom(numpy_helper.from_array(q, tensor.name))
    assert route_small_convolutions_to_gemm(with_minus_128, max_output_values=10**9) == [
        "large.weight_quantized"
    ]

    unknown_size = onnx.ModelProto()
    unknown_size.CopyFrom(int8_model)
    unknown_size.graph.input[0].type.tensor_type.ClearField("shape")
    del unknown_size.graph.value_info[:]
    assert route_small_convolutions_to_gemm(unknown_size, max_output_values=10**9) == []
    assert unchanged.SerializeToString() == int8_model.SerializeToString()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu avx512_vnni amx_bf16 amx_tile amx_int8", True),
        ("fpu avx512_vnni amx_tile", False),
        ("fpu avx2", False),
    ],
)
def test_amx_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_amx_int8(cpuinfo) is expected
    assert cpu_has_amx_int8(tmp_path / "missing") is False
