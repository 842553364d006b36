"""``covidct serve`` through the real typer app: it refuses unsafe or invalid settings and
hands the app to uvicorn."""

from __future__ import annotations

import pytest
import uvicorn
from typer.testing import CliRunner

from covidct.cli.app import app
from covidct.intended_use import RESEARCH_USE_STATEMENT

WIDE = {"COLUMNS": "250"}


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={**WIDE, **(env or {})})


@pytest.fixture
def started(monkeypatch):
    """What ``uvicorn.run`` was called with (nothing is served)."""
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **options: calls.append((application, options)))
    return calls


def test_serve_starts_uvicorn_on_loopback_by_default(onnx_model_dir, started):
    result = invoke("serve", onnx_model_dir, "--device", "cpu", "--engine", "onnx")

    assert result.exit_code == 0, result.output
    application, options = started[0]
    assert (options["host"], options["port"]) == ("127.0.0.1", 8000)
    assert application.state.settings.engine == "onnx"
    assert RESEARCH_USE_STATEMENT in " ".join(result.output.split())


def test_serve_takes_the_api_key_from_the_environment(onnx_model_dir, started):
    result = invoke(
        "serve",
        onnx_model_dir,
        "--device",
        "cpu",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        env={"COVIDCT_API_KEY": "k3y"},
    )

    assert result.exit_code == 0, result.output
    assert started[0][0].state.settings.api_key.get_secret_value() == "k3y"


# (id, extra arguments, environment, expected one-line error)
REFUSED = [
    (
        "open-host-without-key",
        ["--host", "0.0.0.0"],
        {},
        "error: --host 0.0.0.0 lets other machines connect, so it needs an API key",
    ),
    (
        "bad-limit",
        [],
        {"COVIDCT_MAX_FILES": "many"},
        "error: invalid server setting: max_files: Input should be a valid integer",
    ),
    ("bad-engine", ["--engine", "onnx8"], {}, "Invalid value for '--engine'"),
]


@pytest.mark.parametrize(
    ("args", "env", "message"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
def test_serve_refuses_unsafe_or_invalid_settings(onnx_model_dir, started, args, env, message):
    result = invoke("serve", onnx_model_dir, "--device", "cpu", *args, env=env)

    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert started == []


def test_serve_refuses_a_missing_model_directory(tmp_path, started):
    result = invoke("serve", tmp_path / "nowhere")

    assert result.exit_code == 2
    assert "error:" in result.output and "nowhere" in result.output
    assert started == []


def test_serve_sets_uvicorn_connection_limit_and_reads_timeouts_from_the_environment(onnx_model_dir, started):
    env = {
        "COVIDCT_LIMIT_CONCURRENCY": "12",
        "COVIDCT_BODY_TIMEOUT_S": "7.5",
        "COVIDCT_MAX_REQUEST_VOXELS": "1000000",
    }

    result = invoke("serve", onnx_model_dir, "--device", "cpu", env=env)

    assert result.exit_code == 0, result.output
    application, options = started[0]
    assert options["limit_concurrency"] == 12
    settings = application.state.settings
    assert (settings.body_timeout_s, settings.max_request_voxels) == (7.5, 1_000_000)


def test_serve_reads_the_api_key_from_a_file_and_its_help_discourages_the_command_line(
    onnx_model_dir, started, tmp_path
):
    key_file = tmp_path / "key.txt"
    key_file.write_text("k3y-from-file\nignored\n")

    result = invoke(
        "serve", onnx_model_dir, "--device", "cpu", "--host", "0.0.0.0", "--api-key-file", key_file
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    refused = invoke("serve", onnx_model_dir, "--device", "cpu", "--api-key-file", empty)
    help_text = " ".join(invoke("serve", "--help").output.split())

    assert result.exit_code == 0, result.output
    assert started[0][0].state.settings.api_key.get_secret_value() == "k3y-from-file"
    assert refused.exit_code == 2 and "the API key file's first line is empty" in refused.output
    assert "visible to every user of the machine (ps): prefer COVIDCT_API_KEY or --api-key-file" in help_text
