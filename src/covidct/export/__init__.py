"""Model exports for other runtimes: ONNX (fp32 and int8)."""
