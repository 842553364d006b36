"""The ONNX engines need no torch: load_model(dir, engine="onnx-int8").predict(...) in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from covidct import load_model

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from covidct import load_model

    predictor = load_model(sys.argv[1], engine="onnx-int8", device="cpu")
    run = predictor.predict(sys.argv[2:])
    heavy = sorted(name for name in ("torch", "torchvision", "pytorch_grad_cam") if name in sys.modules)
    rows = [[p.path, p.label, p.prob_covid, p.ood_score] for p in run.predictions]
    print(json.dumps({"heavy": heavy, "predictions": rows}))
    """
)


@pytest.fixture(scope="module")
def paths(tiny_dataset):
    return [str(path) for path in tiny_dataset.paths["COVID"][:2] + tiny_dataset.paths["non-COVID"][:2]]


def test_onnx_int8_predicts_without_importing_torch(onnx_model_dir, paths):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(onnx_model_dir), *paths],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )

    answer = json.loads(done.stdout.splitlines()[-1])

    assert answer["heavy"] == []
    expected = load_model(onnx_model_dir, engine="onnx-int8", device="cpu").predict(paths).predictions
    assert answer["predictions"] == [
        [p.path, p.label, pytest.approx(p.prob_covid, abs=1e-6), pytest.approx(p.ood_score, rel=1e-6)]
        for p in expected
    ]


def test_grad_cam_beside_an_onnx_engine_loads_the_torch_weights(onnx_model_dir, paths):
    predictor = load_model(onnx_model_dir, engine="onnx", device="cpu")

    run = predictor.explain(paths[:1])

    assert run.explanations[0].heatmap.shape == (64, 64)
    assert run.predictions[0].prob_covid == pytest.approx(
        predictor.predict(paths[:1]).predictions[0].prob_covid, abs=1e-6
    )
