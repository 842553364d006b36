"""Building the CLI and printing any command's help loads none of the heavy libraries (issue 16).

Each check runs in a fresh interpreter: this test process has long since imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import all_command_paths

HEAVY = (
    "torch",
    "torchvision",
    "onnxruntime",
    "fastapi",
    "uvicorn",
    "matplotlib",
    "pydicom",
    "nibabel",
    "sklearn",
    "scipy",
    "cv2",
)
# Help needs no array either: numpy and Pillow alone were a fifth of the 0.5 s that `covidct --help` may take;
# importlib.metadata (the version) took 60 ms of it. pydantic comes with typer from 0.29 on (pyproject pins
# below it): with it, a command's help took 0.39 s instead of 0.24.
HELP_HEAVY = (*HEAVY, "numpy", "PIL", "importlib.metadata", "pydantic")

_HELP_THEN_LIST_HEAVY = """
import json, sys
from typer.testing import CliRunner
from covidct.cli.app import app
result = CliRunner().invoke(app, sys.argv[1:] + ["--help"])
assert result.exit_code == 0, result.output
print(json.dumps(sorted(name for name in {heavy} if name in sys.modules)))
"""


def heavy_modules_after(*args: str) -> list[str]:
    """The modules of ``HELP_HEAVY`` a fresh interpreter holds after ``covidct ARGS --help``."""
    code = _HELP_THEN_LIST_HEAVY.format(heavy=HELP_HEAVY)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", all_command_paths(), ids=lambda path: " ".join(path) or "covidct")
def test_help_imports_nothing_heavy(command):
    assert heavy_modules_after(*command) == []


_PREDICT_THEN_LIST_HEAVY = """
import json, sys
from typer.testing import CliRunner
from covidct.cli.app import app
result = CliRunner().invoke(app, ["predict", *sys.argv[1:]])
assert result.exit_code == 0, result.output
heavy = ("torch", "torchvision", "matplotlib", "scipy", "pydantic")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def test_predict_with_an_onnx_engine_imports_no_torch(onnx_model_dir, tiny_dataset, tmp_path):
    """``covidct predict --engine onnx-int8`` (no --cam) runs on onnxruntime and numpy alone; matplotlib
    (0.75 s) only when --plots asks for study plots; no scipy (importing scipy.ndimage took 0.2 s), no
    pydantic (0.15-0.18 s with typer's option coercion)."""
    out = tmp_path / "predictions.csv"
    images = [str(path) for path in tiny_dataset.paths["COVID"][:2]]
    arguments = [str(onnx_model_dir), *images, "--engine", "onnx-int8", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT_THEN_LIST_HEAVY, *arguments],
        capture_output=True,
        text=True,
        check=True,
    )

    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert (
        len(out.read_text(encoding="utf-8").splitlines()) >= 3
    )  # the header (after the notice) and two rows


def test_the_server_application_imports_no_torch_matplotlib_or_scipy():
    """What ``covidct serve`` imports before it can answer /healthz: the ONNX engines' server needs
    none of these (matplotlib draws Grad-CAM overlays only when one is asked for)."""
    code = (
        "import json, sys\n"
        "import covidct.server.app\n"
        "print(json.dumps(sorted(m for m in ('torch', 'torchvision', 'matplotlib', 'scipy', 'sklearn')"
        " if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
