"""Export a model directory to ONNX, fp32 or int8, with a settings file (``FILE.onnx.json``) beside it.

Exporter: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter that is the default
since torch 2.9 (it needs ``onnxscript``). The TorchScript exporter (``dynamo=False``) still works in
torch 2.14 but warns that it is deprecated and will be removed. The graph takes the normalised
(N, 3, S, S) float32 input with a dynamic batch axis and returns the penultimate ``features``
(N, 2048), which the out-of-distribution guard needs, and the ``logits`` (N, C); flips, calibration
and threshold stay in covidct (``infer.engines``), so every engine shares them.

int8 is static quantization with onnxruntime: the graph is first prepared with ``quant_pre_process``
(shape inference, BatchNorm folded into the convolutions), then ``quantize_static`` in QDQ format
with int8 weights (per output channel) and uint8 activations whose ranges are the 0.01st-99.99th
percentiles of their values on training slices (``export.calibration``). The first convolution (it
sees the image itself, about 3% of the work) and the classifier head stay fp32. Both choices were
made on UCSD validation agreement with the fp32 export (one pass, BENCHMARKS.md): logit RMSE 0.71 and
|delta AUC| 0.015 with MinMax ranges and everything int8; 0.16 and 0.0003 with these.
On a CPU with AMX-INT8 the small convolutions' weights are then re-expressed with zero point -1, so
onnxruntime runs them on AMX (``export.gemm_routing``; the outputs are bit-identical).
model.json is never modified.

uint8 activations with int8 weights (U8S8) is the pairing onnxruntime's x86 kernels are built for
(AVX2 / AVX512-VNNI dot products take one unsigned and one signed operand); int8 activations (S8S8)
ran 2.3x slower here (59 vs 137 slices/s per pass, ResNet-50, batch 32, 2 cores with AVX512-VNNI,
onnxruntime 1.32). U8S8 can saturate on CPUs without VNNI (onnxruntime's quantization docs); the
export's agreement check (``_agreement``) and ``bench/speed.py`` measure the accuracy cost.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from covidct import __version__
from covidct.data.manifest import Manifest, read_manifest
from covidct.errors import ModelDirError, OptionError
from covidct.export.calibration import (
    DEFAULT_CALIBRATION_SLICES,
    CalibrationSet,
    SliceReader,
    calibration_set,
    default_calibration_data,
)
from covidct.export.gemm_routing import (
    GEMM_MAX_OUTPUT_VALUES,
    cpu_has_amx_int8,
    route_small_convolutions_to_gemm,
)
from covidct.infer.engines import (
    INPUT_NAME,
    OUTPUT_NAMES,
    Engine,
    OnnxEngine,
    settings_path,
)
from covidct.infer.torch_engine import TorchEngine
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.card import ModelCard
from covidct.model.checkpoint import load_model_dir
from covidct.model.integrity import file_sha256
from covidct.model.network import FEATURE_DIM, extract_features
from covidct.model.ood import load_detector

OPSET = 18
CHECK_SLICES = 16
# The most |prob_covid| may differ from torch fp32's on the check slices for an export to be kept. fp32 agrees
# to about 1e-5; int8 to 0.15 at worst over 512 UCSD slices (bench/results/speed.json), so 0.25 refuses only
# a broken export or calibration, not quantization's ordinary cost.
AGREEMENT_TOLERANCE = {Engine.ONNX: 1e-3, Engine.ONNX_INT8: 0.25}
QUANTIZATION = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "per_channel": True,
    "weight_type": "int8",
    "activation_type": "uint8",
    "calibrate_method": "Percentile",
    "calib_percentile": 99.99,
    "fp32_nodes": "the first convolution and the classifier head",
    "preprocess": (
        "onnxruntime.quantization.shape_inference.quant_pre_process (shape inference, graph optimisation)"
    ),
}


@dataclass(frozen=True)
class ExportResult:
    """The exported file, its settings file and what the settings say (hash, how it was made,
    agreement with torch)."""

    path: Path
    settings_path: Path
    settings: dict


def export_onnx(
    model_dir: str | Path,
    *,
    int8: bool = False,
    out: str | Path | None = None,
    calibration: Manifest | None = None,
    calibration_slices: int = DEFAULT_CALIBRATION_SLICES,
    progress: Callable[[int, int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model_dir`` to ``out`` (default ``model.onnx``, or ``model.int8.onnx`` with
    ``int8``) and its settings file.

    Args:
        model_dir: a directory written by ``covidct train``.
        int8: quantize to int8, calibrated on training slices.
        out: the ONNX file to write; ``--engine onnx`` / ``onnx-int8`` read only the default names.
        calibration: the dataset to calibrate on (default: the training data recorded in the card).
        calibration_slices: how many train-split slices to calibrate on.
        progress: (done, total) while calibration slices are decoded.
        on_stage: told what is being done, for a progress display.

    Raises:
        ModelDirError: the model directory is unusable.
        OptionError: ``out`` does not end in .onnx; int8 without calibration data (names ``--calibration``).
        InputError: unusable calibration data.
        ModelDirError: the export's probabilities differ from torch's by more than ``AGREEMENT_TOLERANCE``
            (the file is deleted, not kept).
    """
    stage = on_stage or (lambda message: None)
    model_dir = Path(model_dir)
    model, card = load_model_dir(model_dir)
    engine = Engine.ONNX_INT8 if int8 else Engine.ONNX
    out = Path(out) if out is not None else model_dir / engine.onnx_file
    if out.suffix.lower() != ".onnx":
        raise OptionError(f"out must end in .onnx; got '{out.name}'", parameters=("out",))
    calibrated, routing = None, None
    if int8:
        manifest = calibration or read_manifest(
            default_calibration_data(card, model_dir), positive_class=card.positive_class
        )
        stage(f"decoding up to {calibration_slices} training slices for calibration")
        calibrated = calibration_set(manifest, card, n_slices=calibration_slices, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="covidct-export-") as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx" if int8 else out
        stage("exporting the network with torch.onnx (dynamo)")
        _export_fp32(model, card.preprocessing.image_size, fp32_path)
        if calibrated is not None:
            stage(f"quantizing to int8, calibrated on {len(calibrated.slices)} training slices")
            routing = _quantize(fp32_path, out, calibrated, card, Path(tmp))
    stage("checking the export against the torch model")
    agreement = _agreement(model, card, model_dir, out, engine, calibrated)
    _check_agreement(out, engine, agreement)
    settings = _settings(out, engine, model_dir, card, calibrated, routing, agreement)
    path = settings_path(out)
    path.write_text(json.dumps(settings, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return ExportResult(out, path, settings)


class _FeaturesAndLogits(nn.Module):
    """The network as exported: (N, 3, S, S) -> (features (N, 2048), logits (N, C))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = extract_features(self.model, images)
        return features, self.model.fc(features)


def _export_fp32(model: nn.Module, image_size: int, path: Path) -> None:
    # An example batch of 2: torch.export specialises a dimension of size 1, which would fix the batch axis.
    example = torch.zeros(2, 3, image_size, image_size)
    program = torch.onnx.export(
        _FeaturesAndLogits(model).eval(),
        (example,),
        dynamo=True,
        opset_version=OPSET,
        verbose=False,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    program.save(str(path))


def _quantize(fp32_path: Path, out: Path, calibrated: CalibrationSet, card: ModelCard, tmp: Path) -> dict:
    """Write the int8 export to ``out``; return what was routed to AMX (``_route_to_amx``)."""
    prepared = tmp / "model.prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        SliceReader(calibrated.slices, card.preprocessing),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"CalibPercentile": QUANTIZATION["calib_percentile"]},
        nodes_to_exclude=_fp32_nodes(onnx.load(str(prepared)).graph),
    )
    return _route_to_amx(out)


def _route_to_amx(path: Path) -> dict:
    """Rewrite the int8 export at ``path`` for AMX when this CPU has it; say what was done."""
    has_amx = cpu_has_amx_int8()
    routed = []
    if has_amx:
        model = onnx.load(str(path))
        routed = route_small_convolutions_to_gemm(model)
        onnx.save(model, str(path))
    return {
        "exporting_cpu_has_amx_int8": has_amx,
        "convolutions_routed": len(routed),
        "rule": (
            f"int8 convolutions with at most {GEMM_MAX_OUTPUT_VALUES} output values an image get weight "
            "zero point -1 (weights q - 1: the same values), so onnxruntime runs them on its AMX GEMM, "
            "faster there; bit-identical outputs on any CPU, a slower pass without AMX (re-export there)"
        ),
    }


def _fp32_nodes(graph: onnx.GraphProto) -> list[str]:
    """The nodes int8 would hurt most for what they save: the convolution that reads
    the image, and the head."""
    stem = [
        node.name for node in graph.node if node.op_type == "Conv" and node.input[0] == graph.input[0].name
    ]
    head = [node.name for node in graph.node if node.op_type in {"Gemm", "MatMul"}]
    return stem + head


def _agreement(
    model: nn.Module,
    card: ModelCard,
    model_dir: Path,
    path: Path,
    engine: Engine,
    calibrated: CalibrationSet | None,
) -> dict:
    """How far the export's outputs are from the torch model's (fp32, no autocast) on a few slices."""
    if calibrated is not None:
        slices, inputs = calibrated.slices[:CHECK_SLICES], "calibration (training) slices"
    else:
        size = card.preprocessing.image_size
        slices = torch.rand(CHECK_SLICES, size, size, generator=torch.Generator().manual_seed(0)).numpy()
        inputs = "uniform random slices, seed 0"
    options = {
        "preprocessing": card.preprocessing,
        "batch_size": CHECK_SLICES,
        "tta_hflip": card.decision.tta_hflip,
    }
    ref_features, ref_logits = TorchEngine(
        model, device=torch.device("cpu"), use_bf16=False
    ).features_and_logits(slices, **options)
    features, logits = OnnxEngine(path, kind=engine).features_and_logits(slices, **options)
    prob, ref_prob = (card.decision.probabilities(x)[:, card.positive_index] for x in (logits, ref_logits))
    agreement = {
        "reference": "torch fp32 (no autocast), same flips",
        "n_slices": len(slices),
        "inputs": inputs,
        "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
        "max_abs_feature_diff": float(np.abs(features - ref_features).max()),
        "max_abs_prob_covid_diff": float(np.abs(prob - ref_prob).max()),
    }
    if card.ood is not None:
        # The guard's Mahalanobis distance over 2048 features magnifies small feature
        # errors (int8 most of all).
        detector = load_detector(model_dir, card)
        scores, ref_scores = detector.scores(features), detector.scores(ref_features)
        agreement["max_rel_ood_score_diff"] = float(np.max(np.abs(scores - ref_scores) / ref_scores))
        agreement["ood_flag_agreement"] = float(
            np.mean(detector.is_in_distribution(scores) == detector.is_in_distribution(ref_scores))
        )
    return agreement


def _check_agreement(out: Path, engine: Engine, agreement: dict) -> None:
    """Delete ``out`` (this export just wrote it) and raise when it is out of tolerance with torch."""
    tolerance = AGREEMENT_TOLERANCE[engine]
    difference = agreement["max_abs_prob_covid_diff"]
    if not difference <= tolerance:  # NaN too
        out.unlink(missing_ok=True)
        raise ModelDirError(
            f"the {engine} export gives probabilities up to {difference:.3g} away from the torch model's on "
            f"{agreement['n_slices']} {agreement['inputs']} (tolerance "
            f"{tolerance:g}); it was not kept. Re-run the export; "
            "if int8 keeps failing, use the fp32 export (covidct export without --int8)",
            path=out,
        )


def _settings(
    out: Path,
    engine: Engine,
    model_dir: Path,
    card: ModelCard,
    calibrated: CalibrationSet | None,
    routing: dict | None,
    agreement: dict,
) -> dict:
    size = card.preprocessing.image_size
    return {
        "file": out.name,
        "sha256": file_sha256(out),
        "size_bytes": out.stat().st_size,
        "engine": str(engine),
        "precision": "int8" if calibrated is not None else "fp32",
        "source": {
            "model_dir": str(model_dir.resolve()),
            "checkpoint_sha256": card.checkpoint_sha256,
            "classes": list(card.classes),
        },
        "graph": {
            "opset": OPSET,
            "input": {
                "name": INPUT_NAME,
                "shape": ["N", 3, size, size],
                "dtype": "float32",
                "values": (
                    "grayscale in [0, 1] replicated to 3 channels, normalised with the card's mean and std"
                ),
            },
            "outputs": {"features": ["N", FEATURE_DIM], "logits": ["N", len(card.classes)]},
            "not_in_graph": (
                "test-time flips, calibration (temperature, class bias) "
                "and threshold: covidct applies them from model.json"
            ),
        },
        "exporter": {
            "function": "torch.onnx.export",
            "dynamo": True,
            "torch": version("torch"),
            "onnxscript": version("onnxscript"),
            "onnx": version("onnx"),
        },
        "quantization": None
        if calibrated is None
        else {
            **QUANTIZATION,
            "onnxruntime": version("onnxruntime"),
            "calibration": calibrated.facts,
            "amx_routing": routing,
        },
        "agreement_with_torch": agreement,
        "covidct_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "intended_use": RESEARCH_USE_STATEMENT,
    }
