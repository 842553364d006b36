"""train --out / evaluate --out: covidct writes only into a new, empty or same-kind run folder (issue 15)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from covidct.cli.app import app
from covidct.errors import OptionError
from covidct.run_dir import RUN_FILE, claim_run_dir, run_kind


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new" / "model", tmp_path / "empty"):
        claim_run_dir(folder, "train")
        assert run_kind(folder) == "train" and [p.name for p in folder.iterdir()] == [RUN_FILE]


def test_a_run_of_the_same_kind_may_be_written_again(tmp_path):
    claim_run_dir(tmp_path / "model", "train")
    (tmp_path / "model" / "model.json").write_text("{}")

    claim_run_dir(tmp_path / "model", "train")


@pytest.mark.parametrize(
    ("kind", "found"), [("train", "a covidct evaluate run"), ("evaluate", "files covidct did not write")]
)
def test_a_folder_of_something_else_is_refused_without_overwrite(tmp_path, kind, found):
    folder = tmp_path / "out"
    if kind == "train":
        claim_run_dir(folder, "evaluate")
    folder.mkdir(exist_ok=True)
    (folder / "patient_notes.txt").write_text("mine")

    with pytest.raises(
        OptionError,
        match=(
            rf"^--out {folder} holds {found} \(e.g. patient_notes.txt\); "
            r"choose a new or empty folder, or pass --overwrite"
        ),
    ):
        claim_run_dir(folder, kind)
    claim_run_dir(folder, kind, overwrite=True)
    assert run_kind(folder) == kind and (folder / "patient_notes.txt").read_text() == "mine"


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "model").write_text("x")

    with pytest.raises(OptionError, match=r"--out must be a folder; '.*model' is a file"):
        claim_run_dir(tmp_path / "model", "train")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_refuse_a_users_folder_before_any_work(
    tmp_path, onnx_model_dir, tiny_dataset, random_weights, command
):
    out = tmp_path / "my_files"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone else's model")
    args = (
        [
            "train",
            str(tiny_dataset.csv),
            "--out",
            str(out),
            "--weights",
            str(random_weights),
            "--device",
            "cpu",
        ]
        if command == "train"
        else ["evaluate", str(onnx_model_dir), str(tiny_dataset.csv), "--out", str(out), "--device", "cpu"]
    )

    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})

    assert result.exit_code == 2, result.output
    assert "holds files covidct did not write (e.g. model.safetensors)" in " ".join(result.output.split())
    assert [p.name for p in out.iterdir()] == ["model.safetensors"] and (
        out / "model.safetensors"
    ).read_bytes() == b"someone else's model"
