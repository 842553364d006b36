"""``covidct pretrain`` and ``covidct train --backbone`` through the real typer app, with one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidct.cli.app import app

WIDE = {"COLUMNS": "250"}
TINY = ("--image-size", 64, "--batch-size", 8, "--device", "cpu")


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args], env=WIDE)


def one_line(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def flat_folder(tiny_dataset, tmp_path_factory) -> Path:
    """12 COVID slices in one folder, no class subfolders: patients C04-C05 (val) and C06-C07 (test)."""
    folder = tmp_path_factory.mktemp("flat")
    for path in tiny_dataset.paths["COVID"][12:]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def pretrained_cli(flat_folder, random_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-pretrain") / "backbone"
    result = invoke(
        "pretrain",
        flat_folder,
        "--out",
        out,
        "--epochs",
        1,
        "--queue-size",
        8,
        "--weights",
        random_weights,
        *TINY,
    )
    return out, result


def test_pretrain_on_a_folder_without_classes_writes_a_backbone(pretrained_cli):
    out, result = pretrained_cli

    assert result.exit_code == 0, result.output
    assert "no split column: all 12 rows are pre-trained on" in one_line(result)
    assert f"Backbone written to {out} (MoCo v2, 1 epochs on 12 slices of 12 files" in one_line(result)
    assert json.loads((out / "backbone.json").read_text())["n_slices"] == 12


def test_train_refuses_a_backbone_that_saw_its_test_split(pretrained_cli, tiny_dataset, tmp_path):
    out, _ = pretrained_cli
    result = invoke("train", tiny_dataset.csv, "--out", tmp_path / "model", "--backbone", out, *TINY)

    assert result.exit_code == 2
    assert "error: " in result.output and "Traceback" not in result.output
    assert (
        "6 of the 12 test files (e.g. C06_0.png) are among the files the --backbone was pre-trained on"
        in (one_line(result))
    )


def test_backbone_and_weights_are_exclusive(pretrained_cli, tiny_dataset, tmp_path):
    out, _ = pretrained_cli
    result = invoke(
        "train", tiny_dataset.csv, "--out", tmp_path / "m", "--backbone", out, "--weights", "torchvision"
    )

    assert result.exit_code == 2
    assert "--backbone and --weights torchvision both name start weights" in one_line(result)
    assert not (tmp_path / "m").exists()


def test_pretrain_refuses_an_out_folder_with_other_files(flat_folder, random_weights, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = invoke("pretrain", flat_folder, "--out", tmp_path, "--weights", random_weights, *TINY)

    assert result.exit_code == 2
    assert f"--out {tmp_path} holds files covidct did not write (e.g. keep.txt)" in one_line(result)


def test_train_names_a_bad_backbone_folder(tiny_dataset, tmp_path):
    (tmp_path / "backbone.json").write_text("{}")
    result = invoke("train", tiny_dataset.csv, "--out", tmp_path / "model", "--backbone", tmp_path, *TINY)

    assert result.exit_code == 2
    assert f"{tmp_path / 'backbone.json'}: format is None, expected 'covidct-backbone/1'" in one_line(result)
