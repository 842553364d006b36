"""Building the CLI and printing any command's help loads none of the heavy libraries (issue 16).

Each check runs in a fresh interpreter: this test process has long since imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import all_command_paths

HEAVY = ("torch", "torchvision", "onnxruntime", "fastapi", "uvicorn", "matplotlib", "pydicom", "nibabel", "sklearn", "scipy", "cv2")

_HELP_THEN_LIST_HEAVY = """
import json, sys
from typer.testing import CliRunner
from covidct.cli.app import app
result = CliRunner().invoke(app, sys.argv[1:] + ["--help"])
assert result.exit_code == 0, result.output
print(json.dumps(sorted(name for name in {heavy} if name in sys.modules)))
"""


def heavy_modules_after(*args: str) -> list[str]:
    """The heavy top-level modules a fresh interpreter holds after ``covidct ARGS --help``."""
    code = _HELP_THEN_LIST_HEAVY.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", all_command_paths(), ids=lambda path: " ".join(path) or "covidct")
def test_help_imports_nothing_heavy(command):
    assert heavy_modules_after(*command) == []

