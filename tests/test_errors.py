"""One "did you mean" for every choice; option errors name parameters in Python and flags in the CLI."""

from __future__ import annotations

import pytest

from covidct.errors import OptionError, did_you_mean

# (id, value, choices, hint)
CLOSE = [
    ("typo", "maen", ["mean", "max", "topk"], " (did you mean 'mean'?)"),
    ("case", "covid", ["COVID", "non-COVID"], " (did you mean 'COVID'?)"),
    ("underscore", "onnx_int8", ["torch", "onnx", "onnx-int8"], " (did you mean 'onnx-int8'?)"),
    ("nothing-close", "tensorrt", ["torch", "onnx", "onnx-int8"], ""),
]


@pytest.mark.parametrize(
    ("value", "choices", "hint"), [case[1:] for case in CLOSE], ids=[case[0] for case in CLOSE]
)
def test_did_you_mean_names_the_closest_choice_as_spelled(value, choices, hint):
    assert did_you_mean(value, choices) == hint


# (id, error, Python message, CLI message)
FLAGS = [
    (
        "one-parameter",
        OptionError("batch_size must be at least 1; got 0", parameters=("batch_size",)),
        "batch_size must be at least 1; got 0",
        "--batch-size must be at least 1; got 0",
    ),
    (
        "two-parameters",
        OptionError(
            "frozen_views needs train_layers layer4; got train_layers all",
            parameters=("frozen_views", "train_layers"),
        ),
        "frozen_views needs train_layers layer4; got train_layers all",
        "--frozen-views needs --train-layers layer4; got --train-layers all",
    ),
    (
        "whole-words-only",
        OptionError("window width must be positive", parameters=("window", "width_mm")),
        "window width must be positive",
        "--window width must be positive",
    ),
    (
        "with-a-path",
        OptionError("out must end in .csv", path="x.txt", parameters=("out",)),
        "x.txt: out must end in .csv",
        "x.txt: --out must end in .csv",
    ),
    (
        "no-parameters",
        OptionError("--int8 needs --calibration"),
        "--int8 needs --calibration",
        "--int8 needs --calibration",
    ),
]


@pytest.mark.parametrize(
    ("error", "python", "cli"), [case[1:] for case in FLAGS], ids=[case[0] for case in FLAGS]
)
def test_option_errors_name_parameters_and_the_cli_shows_their_flags(error, python, cli):
    assert str(error) == python
    assert error.as_flags() == cli
