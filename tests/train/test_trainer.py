"""fit: a complete model directory from a tiny dataset, reproducible, resumable, and honest about bad files.

Every run uses 64 x 64 synthetic slices, two epochs of one or two optimiser steps, so a ResNet-50
trains in seconds on two CPU cores; the start weights are random (no download).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import write_csv

from covidct.data.manifest import read_manifest
from covidct.errors import (
    InputError,
    ModelDirError,
    OptimisticMetricsWarning,
    TrainingInterrupted,
)
from covidct.io.failures import InputFailure
from covidct.model.checkpoint import load_model_dir
from covidct.model.pretrained import resolve_pretrained
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

pytestmark = pytest.mark.filterwarnings(
    "ignore::covidct.errors.OptimisticMetricsWarning"
)  # folder data has no patient ids

CONFIG = TrainConfig(image_size=64, epochs=2, batch_size=16, device="cpu", train_layers="layer3")
LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds"]


def read_log(model_dir: Path) -> list[dict]:
    with (model_dir / "train_log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def learned(log: list[dict]) -> list[tuple[str, str, str]]:
    """The columns that depend on the computation only (not on the clock)."""
    return [(row["train_loss"], row["val_loss"], row["val_auc"]) for row in log]


@pytest.fixture(scope="module")
def pretrained(random_weights):
    return resolve_pretrained(random_weights)


@pytest.fixture(scope="module")
def folder_run(tiny_dataset, pretrained, tmp_path_factory):
    """One fine-tuning run on the class-folder dataset (no patient ids, so covidct splits by image)."""
    with pytest.warns(OptimisticMetricsWarning, match="no patient ids"):
        return fit(
            read_manifest(tiny_dataset.root),
            tmp_path_factory.mktemp("run") / "model",
            CONFIG,
            pretrained=pretrained,
        )


def test_fit_writes_a_complete_model_dir(folder_run):
    assert sorted(p.name for p in folder_run.model_dir.iterdir()) == [
        ".covidct-run.json",
        "model.json",
        "model.safetensors",
        "ood.safetensors",
        "train_log.csv",
    ]
    assert folder_run.failures == []


def test_train_log_has_one_row_per_epoch(folder_run):
    log = read_log(folder_run.model_dir)

    assert [row["epoch"] for row in log] == ["0", "1"]
    assert list(log[0]) == LOG_COLUMNS
    assert all(0.0 <= float(row["val_auc"]) <= 1.0 for row in log)


def test_card_describes_the_run(folder_run, tiny_dataset, random_weights):
    card = json.loads((folder_run.model_dir / "model.json").read_text())

    assert card == json.loads(json.dumps(folder_run.card.to_dict()))
    assert card["classes"] == ["COVID", "non-COVID"] and card["positive_class"] == "COVID"
    assert card["preprocessing"]["image_size"] == 64
    assert card["training"]["epochs_run"] == 2 and card["training"]["mode"] == "finetune"
    assert card["data"]["split_method"] == "stratified by image (no patient ids: metrics are optimistic)"
    assert card["data"]["has_patient_ids"] is False
    assert card["data"]["origin"] == str(tiny_dataset.root)
    assert card["data"]["unusable_files"] == []
    counts = card["data"]["class_counts"]
    assert sum(sum(split.values()) for split in counts.values()) == 48
    assert all(count > 0 for split in counts.values() for count in split.values())
    assert card["validation_metrics"]["n"] == sum(counts["val"].values())
    assert 0.0 <= card["decision"]["threshold"] <= 1.0 and card["decision"]["temperature"] > 0
    assert card["weights"]["imagenet"]["file"] == random_weights.name


def test_saved_model_loads_and_keeps_frozen_layers(folder_run, random_weights):
    model, card = load_model_dir(folder_run.model_dir)
    start = load_file(random_weights)
    trained = model.state_dict()

    assert card.checkpoint_sha256 == folder_run.card.checkpoint_sha256
    for name in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.3.bn3.running_var"):
        assert torch.equal(trained[name], start[name]), (
            f"{name} changed although it is frozen (--train-layers layer3)"
        )
    assert not torch.equal(trained["layer4.2.conv3.weight"], start["layer4.2.conv3.weight"])


def test_mixup_and_label_smoothing_change_the_training_and_are_recorded(
    folder_run, tiny_dataset, pretrained, tmp_path
):
    """The same run with both regularisers: another training loss, the validation pass as before."""
    regularised = dataclasses.replace(CONFIG, mixup_alpha=0.2, label_smoothing=0.1)
    with pytest.warns(OptimisticMetricsWarning):
        run = fit(read_manifest(tiny_dataset.root), tmp_path / "model", regularised, pretrained=pretrained)
    log, plain = read_log(run.model_dir), read_log(folder_run.model_dir)

    assert run.card.training["mixup_alpha"] == 0.2 and run.card.training["label_smoothing"] == 0.1
    assert [row["epoch"] for row in log] == ["0", "1"]
    assert log[0]["train_loss"] != plain[0]["train_loss"]


class InterruptAfterFirstEpoch(TrainCallbacks):
    """Simulates Ctrl-C right after the first epoch's resumable state was written."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_epoch_end(self, record: dict, epochs: int) -> None:
        self.records.append(record)
        raise KeyboardInterrupt


@dataclasses.dataclass
class ResumeStory:
    """What happened along the way: Ctrl-C after epoch 1, a resume with other options, a proper resume."""

    first_epoch: dict
    interrupted: TrainingInterrupted
    left_after_interrupt: list[str]
    refused: ModelDirError
    resumed: object
    out: Path


@pytest.fixture(scope="module")
def resume_story(tiny_dataset, pretrained, tmp_path_factory):
    """The same run as ``folder_run``, interrupted after its first epoch and then resumed."""
    manifest, out = read_manifest(tiny_dataset.root), tmp_path_factory.mktemp("resume") / "model"
    interrupt = InterruptAfterFirstEpoch()
    with pytest.raises(TrainingInterrupted) as interrupted:
        fit(manifest, out, CONFIG, pretrained=pretrained, callbacks=interrupt)
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(ModelDirError) as refused:
        fit(manifest, out, dataclasses.replace(CONFIG, lr=5e-4, seed=1), pretrained=pretrained, resume=True)
    resumed = fit(manifest, out, CONFIG, pretrained=pretrained, resume=True)
    return ResumeStory(interrupt.records[0], interrupted.value, left, refused.value, resumed, out)


def test_the_same_seed_gives_the_same_epoch(folder_run, resume_story):
    """Two runs from scratch with one seed (the second one interrupted) log the same first epoch."""
    first = read_log(folder_run.model_dir)[0]

    assert {key: str(value) for key, value in resume_story.first_epoch.items() if key != "seconds"} == {
        key: value for key, value in first.items() if key != "seconds"
    }


def test_ctrl_c_leaves_a_resumable_state(resume_story):
    assert str(resume_story.interrupted).endswith(
        "interrupted after 1 completed epoch(s); run the same command with --resume to continue"
    )
    assert resume_story.left_after_interrupt == [
        ".covidct-run.json",
        "resume",
        "resume/best-0.safetensors",
        "resume/last-0.safetensors",
        "resume/state.json",
    ]


def test_resume_with_other_options_is_refused(resume_story):
    assert (
        resume_story.refused.reason
        == "--resume with different options than the interrupted run: ['lr', 'seed']; use the same options"
    )


def test_a_resumed_run_finishes_like_an_uninterrupted_one(folder_run, resume_story):
    log = read_log(resume_story.out)

    assert [row["epoch"] for row in log] == ["0", "1"]
    assert learned(log) == learned(read_log(folder_run.model_dir))
    assert resume_story.resumed.card.training["epochs_run"] == 2
    assert resume_story.resumed.card.decision == folder_run.card.decision
    assert sorted(p.name for p in resume_story.out.iterdir()) == [
        ".covidct-run.json",
        "model.json",
        "model.safetensors",
        "ood.safetensors",
        "train_log.csv",
    ]


def test_resume_without_saved_state_is_refused(tiny_dataset, pretrained, tmp_path):
    with pytest.raises(
        ModelDirError, match=r"nothing to resume \(no resume/state.json\); start without --resume"
    ):
        fit(read_manifest(tiny_dataset.csv), tmp_path / "fresh", CONFIG, pretrained=pretrained, resume=True)


def _csv_with_extra_rows(dataset, tmp_path: Path, extra: list[dict]) -> Path:
    """The tiny dataset's manifest with absolute paths, plus ``extra`` rows."""
    with dataset.csv.open(newline="") as handle:
        rows = [{**row, "path": str(dataset.root / row["path"])} for row in csv.DictReader(handle)]
    return write_csv(tmp_path / "manifest.csv", rows + extra)


@pytest.fixture(scope="module")
def linear_run_with_a_corrupt_file(tiny_dataset, pretrained, tmp_path_factory):
    """A linear-mode run whose training split holds one file that is not an image."""
    folder = tmp_path_factory.mktemp("corrupt")
    broken = folder / "broken.png"
    broken.write_text("this is not a PNG")
    manifest_path = _csv_with_extra_rows(
        tiny_dataset, folder, [{"path": str(broken), "label": "COVID", "patient_id": "C99", "split": "train"}]
    )
    config = dataclasses.replace(CONFIG, mode="linear")
    return fit(read_manifest(manifest_path), folder / "model", config, pretrained=pretrained), broken


def test_a_corrupt_training_file_is_reported_and_training_completes(linear_run_with_a_corrupt_file):
    result, broken = linear_run_with_a_corrupt_file
    expected = InputFailure(str(broken), "not a readable PNG, JPEG, BMP or TIFF image")

    assert result.failures == [expected]
    assert result.card.data["unusable_files"] == [{"path": expected.path, "reason": expected.reason}]
    assert (
        json.loads((result.model_dir / "model.json").read_text())["data"]["unusable_files"]
        == result.card.data["unusable_files"]
    )
    assert len(read_log(result.model_dir)) == 2


def test_linear_mode_trains_only_the_head(linear_run_with_a_corrupt_file, random_weights):
    result, _ = linear_run_with_a_corrupt_file
    model, card = load_model_dir(result.model_dir)
    start = load_file(random_weights)
    trained = model.state_dict()

    assert card.training["mode"] == "linear"
    assert card.data["split_method"] == "split column" and card.data["has_patient_ids"] is True
    for name in (
        "conv1.weight",
        "layer3.0.conv2.weight",
        "layer4.2.conv3.weight",
        "layer4.2.bn3.running_mean",
    ):
        assert torch.equal(trained[name], start[name]), f"{name} changed in linear mode"
    assert trained["fc.weight"].shape == (2, 2048)


def test_a_split_without_usable_images_of_a_class_is_refused(tiny_dataset, pretrained, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    with tiny_dataset.csv.open(newline="") as handle:
        rows = [{**row, "path": str(tiny_dataset.root / row["path"])} for row in csv.DictReader(handle)]
    rows = [
        {**row, "path": str(broken)} if (row["split"], row["label"]) == ("val", "COVID") else row
        for row in rows
    ]
    manifest = read_manifest(write_csv(tmp_path / "manifest.csv", rows))

    with pytest.raises(
        InputError, match=r"the val split has no usable images of class \['COVID'\] \(6 failed to decode\)"
    ):
        fit(manifest, tmp_path / "model", CONFIG, pretrained=pretrained)
