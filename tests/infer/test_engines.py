"""load_model(dir, engine=...): the ONNX engines give the torch engine's answers, and a missing or
stale export is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from covidct import Predictor, load_model
from covidct.errors import ModelDirError, OptionError
from covidct.infer.engines import (
    Engine,
    OnnxEngine,
    available_cpus,
    settings_path,
)
from covidct.infer.torch_engine import TorchEngine
from covidct.model.card import read_card


@pytest.fixture(scope="module")
def slices(tiny_dataset):
    return tiny_dataset.paths["COVID"][-3:] + tiny_dataset.paths["non-COVID"][-3:]


@pytest.fixture(scope="module")
def torch_run(onnx_model_dir, slices):
    """The torch engine in fp32 (no bf16 autocast, which this CPU may support): the reference
    the exports must match."""
    loaded = load_model(onnx_model_dir, device="cpu")
    fp32 = TorchEngine(loaded.model, device=loaded.device, use_bf16=False)
    return Predictor(loaded.model, loaded.card, detector=loaded.detector, device="cpu", engine=fp32).predict(
        slices
    )


# (engine, tolerance on calibrated probabilities, relative tolerance on the OOD score)
ENGINES = [(Engine.ONNX, 1e-4, 1e-3), (Engine.ONNX_INT8, 0.1, 0.5)]


@pytest.mark.parametrize(
    ("engine", "prob_tolerance", "score_tolerance"), ENGINES, ids=[str(case[0]) for case in ENGINES]
)
def test_onnx_engines_agree_with_torch(
    onnx_model_dir, slices, torch_run, engine, prob_tolerance, score_tolerance
):
    predictor = load_model(onnx_model_dir, device="cpu", engine=engine)

    run = predictor.predict(slices)

    assert isinstance(predictor.engine, OnnxEngine) and predictor.engine.kind is engine
    assert predictor.engine.threads == available_cpus()
    assert [p.path for p in run.predictions] == [p.path for p in torch_run.predictions]
    for onnx_p, torch_p in zip(run.predictions, torch_run.predictions, strict=True):
        assert onnx_p.probabilities == pytest.approx(torch_p.probabilities, abs=prob_tolerance)
        assert onnx_p.ood_score == pytest.approx(
            torch_p.ood_score, rel=score_tolerance
        )  # the guard reads the engine's features
        if engine is Engine.ONNX:
            assert onnx_p.label == torch_p.label


@pytest.mark.parametrize("engine", [Engine.ONNX, Engine.ONNX_INT8], ids=str)
def test_the_engines_session_computes_what_onnxruntimes_default_session_computes(onnx_model_dir, engine):
    """The optimizer the engine leaves out (``DISABLED_OPTIMIZERS``) only moves where work happens:
    the outputs are bit-identical."""
    path = onnx_model_dir / engine.onnx_file
    size = read_card(onnx_model_dir).preprocessing.image_size
    images = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    expected = np.concatenate(default.run(["features", "logits"], {"input": images}), axis=1)

    np.testing.assert_array_equal(OnnxEngine(path, kind=engine)(images), expected)


def test_the_default_engine_is_torch(onnx_model_dir):
    assert isinstance(load_model(onnx_model_dir, device="cpu").engine, TorchEngine)


def _link_model(onnx_model_dir, target, *, onnx_files=(), settings=None):
    """A model directory of links to the fixture's files, with ``settings`` (a changed dict)
    written for model.onnx."""
    target.mkdir()
    for name in ("model.json", "model.safetensors", "ood.safetensors", *onnx_files):
        (target / name).symlink_to(onnx_model_dir / name)
    if settings is not None:
        original = json.loads(settings_path(onnx_model_dir / "model.onnx").read_text())
        settings_path(target / "model.onnx").write_text(json.dumps({**original, **settings}))
    return target


def _tampered_weights(onnx_model_dir, target, *, onnx_files=("model.onnx",)):
    """Links, but model.safetensors is a copy with its last byte changed: the card's hash no longer matches
    the weights, though the export still names that hash as its source."""
    _link_model(onnx_model_dir, target, onnx_files=onnx_files)
    weights = target / "model.safetensors"
    content = bytearray(weights.read_bytes())
    content[-1] ^= 1
    weights.unlink()
    weights.write_bytes(bytes(content))
    return target


WEIGHTS_MODIFIED = r"model.safetensors does not match the hash in model.json"
# (id, setup from (fixture model dir, new folder), engine, device, error, message)
ERRORS = [
    ("tampered-weights", _tampered_weights, "onnx", "cpu", ModelDirError, WEIGHTS_MODIFIED),
    # the weights are checked in a thread while onnxruntime opens the export; their error still comes first
    (
        "tampered-weights-and-no-export",
        lambda m, t: _tampered_weights(m, t, onnx_files=()),
        "onnx-int8",
        "cpu",
        ModelDirError,
        WEIGHTS_MODIFIED,
    ),
    (
        "no-model-onnx",
        lambda m, t: _link_model(m, t),
        "onnx",
        "cpu",
        ModelDirError,
        r"no model.onnx for --engine onnx; create it with 'covidct export .*model --format onnx'",
    ),
    (
        "no-int8",
        lambda m, t: _link_model(m, t),
        "onnx-int8",
        "cpu",
        ModelDirError,
        r"no model.int8.onnx for --engine onnx-int8; create it "
        r"with 'covidct export .*model --format onnx --int8'",
    ),
    (
        "no-settings",
        lambda m, t: _link_model(m, t, onnx_files=["model.onnx"]),
        "onnx",
        "cpu",
        ModelDirError,
        "no model.onnx.json beside model.onnx; export it again",
    ),
    (
        "modified-file",
        lambda m, t: _link_model(m, t, onnx_files=["model.onnx"], settings={"sha256": "0" * 64}),
        "onnx",
        "cpu",
        ModelDirError,
        "model.onnx does not match the sha256 in model.onnx.json; the file was modified: export it again",
    ),
    (
        "other-weights",
        lambda m, t: _link_model(
            m, t, onnx_files=["model.onnx"], settings={"source": {"checkpoint_sha256": "1" * 64}}
        ),
        "onnx",
        "cpu",
        ModelDirError,
        r"model.onnx was exported from other weights than this directory's "
        r"model.safetensors; export it again with 'covidct export",
    ),
    (
        "onnx-on-cuda",
        lambda m, t: _link_model(m, t),
        "onnx",
        "cuda",
        OptionError,
        r"--engine onnx runs on the CPU \(onnxruntime's CPU provider\); use --device cpu or auto",
    ),
]


@pytest.mark.parametrize(
    ("setup", "engine", "device", "error", "message"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_engine_errors_say_what_to_run(onnx_model_dir, tmp_path, setup, engine, device, error, message):
    model_dir = setup(onnx_model_dir, tmp_path / "model")

    with pytest.raises(error, match=message):
        load_model(model_dir, engine=engine, device=device)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("onnx_int8", r"got 'onnx_int8' \(did you mean 'onnx-int8'\?\)"),
        ("tensorrt", "--engine must be torch, onnx or onnx-int8; got 'tensorrt'$"),
    ],
)
def test_an_unknown_engine_is_an_option_error(onnx_model_dir, name, message):
    with pytest.raises(OptionError, match=message):
        load_model(onnx_model_dir, engine=name)


def test_a_file_that_is_not_onnx_is_a_model_dir_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("not a model")

    with pytest.raises(ModelDirError, match="onnxruntime cannot load this file"):
        OnnxEngine(path)


def test_an_export_with_other_outputs_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")

    with pytest.raises(
        ModelDirError,
        match=(
            r"expected input 'input' and outputs \['features', "
            r"'logits'\]; found \['input'\] and \['logits'\]"
        ),
    ):
        OnnxEngine(tmp_path / "other.onnx")


def test_an_empty_batch_gives_empty_outputs(onnx_model_dir):
    predictor = load_model(onnx_model_dir, device="cpu", engine="onnx")

    features, logits = predictor.engine.features_and_logits(
        torch.empty(0, 64, 64, dtype=torch.float16),
        preprocessing=predictor.card.preprocessing,
        batch_size=4,
        tta_hflip=True,
    )

    assert (tuple(features.shape), tuple(logits.shape)) == ((0, 2048), (0, 2))


def test_a_copied_model_directory_keeps_working(onnx_model_dir, slices, tmp_path, torch_run):
    """Hashes, not paths, tie the export to the weights: a moved directory still loads."""
    copy = shutil.copytree(onnx_model_dir, tmp_path / "moved")

    run = load_model(copy, device="cpu", engine="onnx-int8").predict(slices[:1])

    assert run.predictions[0].prob_covid == pytest.approx(torch_run.predictions[0].prob_covid, abs=0.1)
