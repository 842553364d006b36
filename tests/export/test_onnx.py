"""export_onnx: the ONNX graph reproduces the torch model, int8 stays close, and the settings
file says how it was made."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from synthetic import write_csv

from covidct.data.dataset import decode_slices
from covidct.data.manifest import read_manifest
from covidct.errors import CovidctWarning, InputError, ModelDirError, OptionError
from covidct.export import onnx as onnx_export
from covidct.export.calibration import calibration_set
from covidct.export.gemm_routing import cpu_has_amx_int8
from covidct.export.onnx import export_onnx
from covidct.infer.engine_kind import Engine
from covidct.infer.engines import OnnxEngine, settings_path
from covidct.infer.torch_engine import TorchEngine
from covidct.model.card import read_card, write_card
from covidct.model.checkpoint import file_sha256, load_model_dir
from covidct.preprocess.transforms import Preprocessing

SETTINGS_KEYS = [
    "agreement_with_torch",
    "covidct_version",
    "created",
    "engine",
    "exporter",
    "file",
    "graph",
    "intended_use",
    "precision",
    "quantization",
    "sha256",
    "size_bytes",
    "source",
]
CALIBRATION_KEYS = [
    "data",
    "is_training_data",
    "manifest_sha256",
    "n_failed",
    "n_slices",
    "n_train_slices",
    "sampling",
    "split",
]


@pytest.fixture(scope="module")
def slices(tiny_dataset) -> np.ndarray:
    """(8, 64, 64) test-split slices of both classes, decoded as covidct does."""
    paths = [p for name in ("COVID", "non-COVID") for p in tiny_dataset.paths[name][-4:]]
    return decode_slices(paths, Preprocessing(image_size=64)).images


def outputs(engine, card, slices) -> tuple[np.ndarray, np.ndarray]:
    return engine.features_and_logits(slices, preprocessing=card.preprocessing, batch_size=4, tta_hflip=False)


def test_fp32_export_reproduces_the_torch_logits(onnx_model_dir, slices):
    model, card = load_model_dir(onnx_model_dir)
    torch_features, torch_logits = outputs(
        TorchEngine(model, device=torch.device("cpu"), use_bf16=False), card, slices
    )

    features, logits = outputs(OnnxEngine(onnx_model_dir / "model.onnx"), card, slices)

    assert logits.shape == (8, 2) and features.shape == (8, 2048)
    assert np.allclose(logits, torch_logits, atol=1e-3), np.abs(logits - torch_logits).max()
    assert np.allclose(features, torch_features, atol=1e-3, rtol=1e-4)


def test_int8_export_gives_probabilities_close_to_torch(onnx_model_dir, slices):
    model, card = load_model_dir(onnx_model_dir)
    _, torch_logits = outputs(TorchEngine(model, device=torch.device("cpu"), use_bf16=False), card, slices)

    _, logits = outputs(OnnxEngine(onnx_model_dir / "model.int8.onnx", kind=Engine.ONNX_INT8), card, slices)

    difference = np.abs(card.decision.probabilities(logits) - card.decision.probabilities(torch_logits)).max()
    assert difference < 0.1
    assert (onnx_model_dir / "model.int8.onnx").stat().st_size < (
        onnx_model_dir / "model.onnx"
    ).stat().st_size / 3


def test_int8_keeps_the_image_convolution_and_the_head_in_fp32(onnx_model_dir):
    graph = onnx.load(str(onnx_model_dir / "model.int8.onnx")).graph
    made_by = {output: node.op_type for node in graph.node for output in node.output}
    initializers = {tensor.name for tensor in graph.initializer}

    def weight_is_quantized(node) -> bool:
        return made_by.get(node.input[1]) == "DequantizeLinear"

    convs = [node for node in graph.node if node.op_type == "Conv"]
    stem = [node for node in convs if node.input[0] == graph.input[0].name]
    heads = [node for node in graph.node if node.op_type in {"Gemm", "MatMul"}]
    assert len(stem) == 1 and stem[0].input[1] in initializers and not weight_is_quantized(stem[0])
    assert heads and not any(weight_is_quantized(node) for node in heads)
    assert (
        sum(weight_is_quantized(node) for node in convs) == len(convs) - 1
    )  # every other convolution is int8


@pytest.mark.parametrize(
    ("engine", "precision"), [(Engine.ONNX, "fp32"), (Engine.ONNX_INT8, "int8")], ids=["fp32", "int8"]
)
def test_the_settings_file_records_hash_source_and_method(onnx_model_dir, engine, precision):
    path = onnx_model_dir / engine.onnx_file
    settings = json.loads(settings_path(path).read_text())

    assert sorted(settings) == SETTINGS_KEYS
    assert (
        settings["file"] == engine.onnx_file
        and settings["engine"] == str(engine)
        and settings["precision"] == precision
    )
    assert settings["sha256"] == file_sha256(path)
    assert settings["source"]["checkpoint_sha256"] == read_card(onnx_model_dir).checkpoint_sha256
    assert settings["graph"]["input"]["shape"] == ["N", 3, 64, 64]
    assert settings["graph"]["outputs"] == {"features": ["N", 2048], "logits": ["N", 2]}
    assert settings["exporter"]["dynamo"] is True
    if precision == "fp32":
        assert settings["quantization"] is None
        assert settings["agreement_with_torch"]["max_abs_logit_diff"] < 1e-3
    else:
        calibration = settings["quantization"]["calibration"]
        assert sorted(calibration) == CALIBRATION_KEYS
        # the tiny dataset's train split: 4 patients x 3 slices per class, all of them (fewer than 32)
        assert (
            calibration["split"],
            calibration["n_train_slices"],
            calibration["n_slices"],
            calibration["is_training_data"],
        ) == ("train", 24, 24, True)
        assert settings["quantization"]["format"] == "QDQ" and settings["quantization"]["per_channel"] is True
        assert settings["quantization"]["calibrate_method"] == "Percentile"
        routing = settings["quantization"]["amx_routing"]
        zero_points = [
            numpy_helper.to_array(tensor)
            for tensor in onnx.load(str(path)).graph.initializer
            if tensor.name.endswith("weight_zero_point")
        ]
        assert routing["exporting_cpu_has_amx_int8"] is cpu_has_amx_int8()
        # at 64 px every int8 convolution's output is under the limit
        assert routing["convolutions_routed"] == sum((zp == -1).all() for zp in zero_points)
        assert routing["convolutions_routed"] == (len(zero_points) if cpu_has_amx_int8() else 0)


@pytest.mark.filterwarnings(
    "ignore::covidct.errors.OptimisticMetricsWarning"
)  # also true here, not the point
def test_calibration_samples_only_the_train_split_and_warns_on_other_data(onnx_model_dir, tiny_dataset):
    card = read_card(onnx_model_dir)
    folder = read_manifest(
        tiny_dataset.root
    )  # the same images without the split column: the split is rebuilt

    with pytest.warns(CovidctWarning, match="not the data this model was trained on"):
        calibrated = calibration_set(folder, card, n_slices=5)

    assert calibrated.slices.shape == (5, 64, 64)
    assert calibrated.facts["is_training_data"] is False
    assert calibrated.facts["n_slices"] == 5


def _model_dir_without_exports(onnx_model_dir, tmp_path, **card_changes):
    """Links to the weights and guard, and a model.json changed by ``card_changes`` (a new
    folder, no ONNX files)."""
    target = tmp_path / "model"
    target.mkdir()
    for name in ("model.safetensors", "ood.safetensors"):
        (target / name).symlink_to(onnx_model_dir / name)
    write_card(target, dataclasses.replace(read_card(onnx_model_dir), **card_changes))
    return target


def _other_classes(tmp_path, tiny_dataset):
    rows = [
        {"path": str(p), "label": label, "split": "train"}
        for label, name in (("A", "COVID"), ("COVID", "non-COVID"))
        for p in tiny_dataset.paths[name][:2]
    ]
    return read_manifest(write_csv(tmp_path / "other.csv", rows))


# (id, export arguments from (tmp_path, tiny_dataset), card changes, error, message)
ERRORS = [
    (
        "out-not-onnx",
        lambda t, d: {"out": t / "model.txt"},
        {},
        OptionError,
        "^out must end in .onnx; got 'model.txt'$",
    ),
    (
        "int8-origin-gone",
        lambda t, d: {"int8": True},
        {"data": {"origin": "/nowhere/train.csv"}},
        OptionError,
        r"--int8 calibrates on training slices, but the training data recorded in "
        r".*model.json \(/nowhere/train.csv\) is not there; pass --calibration DATA",
    ),
    (
        "int8-no-origin",
        lambda t, d: {"int8": True},
        {"data": {}},
        OptionError,
        r"model.json records no training data; pass --calibration DATA",
    ),
    (
        "int8-zero-slices",
        lambda t, d: {"int8": True, "calibration_slices": 0},
        {},
        OptionError,
        "--calibration-slices must be at least 1; got 0",
    ),
    (
        "int8-other-classes",
        lambda t, d: {"int8": True, "calibration": _other_classes(t, d)},
        {},
        InputError,
        r"classes \['A', 'COVID'\] differ from the model's \['COVID', 'non-COVID'\]",
    ),
]


@pytest.mark.parametrize(
    ("arguments", "card_changes", "error", "message"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_export_errors_name_the_option_and_the_fix(
    onnx_model_dir, tiny_dataset, tmp_path, arguments, card_changes, error, message
):
    model_dir = _model_dir_without_exports(onnx_model_dir, tmp_path, **card_changes)

    with pytest.raises(error, match=message):
        export_onnx(model_dir, **arguments(tmp_path, tiny_dataset))

    assert sorted(p.name for p in model_dir.iterdir()) == [
        "model.json",
        "model.safetensors",
        "ood.safetensors",
    ]


def test_an_export_that_disagrees_with_torch_is_refused_and_not_kept(onnx_model_dir, tmp_path, monkeypatch):
    """An export of other weights than the card's (a broken exporter, say): its agreement is
    measured, then enforced."""
    export_fp32 = onnx_export._export_fp32

    def export_other_weights(model, image_size, path):
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.fc.bias.copy_(torch.tensor([8.0, -8.0]))
        export_fp32(other, image_size, path)

    monkeypatch.setattr(onnx_export, "_export_fp32", export_other_weights)
    out = tmp_path / "broken.onnx"

    with pytest.raises(
        ModelDirError,
        match=(
            r"broken.onnx: the onnx export gives probabilities up to [\d.]+ away from the torch "
            r"model's on 16 uniform random slices, seed 0 \(tolerance 0.001\); it was not kept"
        ),
    ):
        export_onnx(onnx_model_dir, out=out)
    assert not out.exists() and not settings_path(out).exists()
