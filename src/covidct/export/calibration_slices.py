"""How many slices calibrate an int8 export by default; apart from the calibrator so that ``covidct export
--help`` can show it without importing torch or onnxruntime."""

# The percentile calibrator keeps every activation of every calibration slice until it builds its histograms:
# about 120 MB per 224 px ResNet-50 slice (15 GB peak for 128 slices here), so 32 (about 4 GB). On UCSD
# validation 32 slices gave a logit RMSE vs fp32 of 0.162, 64 gave 0.159 and 128 gave 0.146 (BENCHMARKS.md).
DEFAULT_CALIBRATION_SLICES = 32
