"""pretrain (MoCo v2): a backbone folder with its provenance, resumable, never fed a test split; and
fit --backbone starting from it.

64 x 64 synthetic slices, batches of 16 and a queue of 32 keep every run to a few seconds on one core;
the start weights are random (no download).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import resnet50

from covidct.data.content_hash import content_sha256, file_sha256
from covidct.data.manifest import read_manifest, read_unlabelled
from covidct.errors import CovidctWarning, InputError, ModelDirError, OptionError, TrainingInterrupted
from covidct.model.backbone import BACKBONE_CARD, BACKBONE_WEIGHTS
from covidct.model.checkpoint import load_model_dir
from covidct.model.pretrained import resolve_pretrained
from covidct.model.weights import load_weights_file
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import PretrainConfig, TrainConfig, auto_queue_size
from covidct.train.moco import MoCo
from covidct.train.pretrain import pretrain
from covidct.train.trainer import fit

CONFIG = PretrainConfig(epochs=2, batch_size=16, image_size=64, queue_size=32, device="cpu")
FINETUNE = TrainConfig(image_size=64, epochs=1, batch_size=16, device="cpu", train_layers="layer3")


@pytest.fixture(scope="module")
def pretrained(random_weights):
    return resolve_pretrained(random_weights)


@pytest.fixture(scope="module")
def backbone_run(tiny_dataset, pretrained, tmp_path_factory):
    """Two epochs of MoCo on the tiny CSV dataset (its test rows left out)."""
    out = tmp_path_factory.mktemp("pretrain") / "backbone"
    return pretrain(read_unlabelled(tiny_dataset.csv), out, CONFIG, pretrained=pretrained)


@pytest.mark.parametrize(
    ("n_slices", "batch_size", "expected"),
    [(543, 32, 256), (2482, 32, 1216), (10**6, 32, 4096), (20, 16, 16)],
)
def test_the_default_queue_holds_at_most_half_the_slices_in_whole_batches(n_slices, batch_size, expected):
    assert auto_queue_size(n_slices, batch_size) == expected


def test_without_a_queue_size_the_run_records_the_one_it_chose(tiny_dataset, pretrained, tmp_path):
    inputs = read_unlabelled(tiny_dataset.root)
    config = dataclasses.replace(CONFIG, epochs=1, queue_size=None)

    with warnings.catch_warnings():
        warnings.simplefilter("error", CovidctWarning)  # the chosen queue is never longer than the data
        result = pretrain(inputs, tmp_path / "bb", config, pretrained=pretrained)

    assert result.card["hyperparameters"]["queue_size"] == 16  # 36 slices, batches of 16


def test_a_queue_longer_than_the_data_is_named_in_a_warning(tiny_dataset, pretrained, tmp_path):
    """37 places for 36 slices: a query would meet older keys of its own slice as negatives."""
    config = dataclasses.replace(CONFIG, epochs=1, queue_size=37)

    with pytest.warns(
        CovidctWarning, match=r"queue_size \(--queue-size\) 37 is more than the 36 slices.*e\.g\. 18"
    ):
        pretrain(read_unlabelled(tiny_dataset.csv), tmp_path / "out", config, pretrained=pretrained)


def test_pretrain_writes_the_backbone_and_its_card(backbone_run):
    assert sorted(p.name for p in backbone_run.out_dir.iterdir()) == [
        ".covidct-run.json",
        BACKBONE_CARD,
        BACKBONE_WEIGHTS,
    ]
    assert json.loads((backbone_run.out_dir / BACKBONE_CARD).read_text()) == backbone_run.card


def test_the_card_records_method_start_weights_and_data(backbone_run, random_weights, tiny_dataset):
    card = backbone_run.card
    hyper = card["hyperparameters"]

    assert card["method"] == "MoCo v2" and card["epochs_run"] == 2 and len(card["history"]) == 2
    assert (hyper["momentum"], hyper["temperature"], hyper["queue_size"]) == (0.999, 0.2, 32)
    assert hyper["lr"] == pytest.approx(0.03 * 16 / 256)
    assert card["start_weights"] == {
        "source": "local file",
        "file": random_weights.name,
        "sha256": file_sha256(random_weights),
    }
    assert card["weights_sha256"] == file_sha256(backbone_run.out_dir / BACKBONE_WEIGHTS)
    assert (card["n_slices"], card["data"]["rows"], card["data"]["excluded_test_rows"]) == (36, 48, 12)
    assert card["preprocessing"]["image_size"] == 64 and card["preprocessing"]["crop_field"] is True
    assert card["wall_time_s"] > 0 and card["training_seconds"] > 0


def test_the_card_hashes_every_input_and_no_test_file(backbone_run, tiny_dataset):
    manifest = read_manifest(tiny_dataset.csv)
    by_split = {
        split: {content_sha256(s.path) for s in manifest.select(split).samples} for split in ("train", "test")
    }
    hashes = backbone_run.card["input_sha256"]

    assert len(hashes) == 36
    assert by_split["train"] <= set(hashes.values())
    assert not by_split["test"] & set(hashes.values())
    assert all(not Path(name).is_absolute() for name in hashes)


def test_the_backbone_is_a_trained_torchvision_resnet50_without_head(backbone_run, random_weights):
    state, variant = load_weights_file(backbone_run.out_dir / BACKBONE_WEIGHTS)
    start = load_file(random_weights)
    expected_keys = {key for key in resnet50().state_dict() if not key.startswith("fc.")}

    assert set(state) == expected_keys and str(variant) == "v1.5"
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.2.conv3.weight"):
        assert not torch.equal(state[name], start[name]), f"{name} did not move from the start weights"


@pytest.fixture(scope="module")
def finetuned(backbone_run, tiny_dataset, pretrained, tmp_path_factory):
    """``fit`` from the backbone (layer3 and up train, so conv1 keeps the backbone's weights); the
    ImageNet ``pretrained`` it is also given is not used."""
    config = dataclasses.replace(FINETUNE, backbone=backbone_run.out_dir)
    out = tmp_path_factory.mktemp("finetune") / "model"
    return fit(read_manifest(tiny_dataset.csv), out, config, pretrained=pretrained)


def test_fit_starts_from_the_backbone(finetuned, backbone_run):
    model, _ = load_model_dir(finetuned.model_dir)
    backbone = load_file(backbone_run.out_dir / BACKBONE_WEIGHTS)

    assert torch.equal(model.state_dict()["conv1.weight"], backbone["conv1.weight"])
    assert torch.equal(model.state_dict()["layer2.3.bn3.running_var"], backbone["layer2.3.bn3.running_var"])


def test_the_model_card_records_the_backbone(finetuned, backbone_run):
    weights = json.loads((finetuned.model_dir / "model.json").read_text())["weights"]
    training = finetuned.card.training

    assert weights["imagenet"] == backbone_run.card["start_weights"]
    assert {key: weights["backbone"][key] for key in ("method", "weights_sha256", "n_slices", "n_files")} == {
        "method": "MoCo v2",
        "weights_sha256": file_sha256(backbone_run.out_dir / BACKBONE_WEIGHTS),
        "n_slices": 36,
        "n_files": 36,
    }
    assert weights["backbone"]["start_weights"] == backbone_run.card["start_weights"]
    assert training["backbone"] == str(backbone_run.out_dir.absolute())


def copy_backbone(backbone_run, tmp_path: Path) -> Path:
    copy = tmp_path / "backbone-copy"
    shutil.copytree(backbone_run.out_dir, copy)
    return copy


def edit_card(folder: Path, change) -> None:
    card = json.loads((folder / BACKBONE_CARD).read_text())
    change(card)
    (folder / BACKBONE_CARD).write_text(json.dumps(card))


def test_a_test_split_the_backbone_saw_is_refused(backbone_run, tiny_dataset, tmp_path):
    manifest = read_manifest(tiny_dataset.csv)
    test_files = [sample.path for sample in manifest.select("test").samples]
    seen = copy_backbone(backbone_run, tmp_path)
    edit_card(
        seen,
        lambda card: card["input_sha256"].update(
            {f"t{i}": content_sha256(p) for i, p in enumerate(test_files[:3])}
        ),
    )
    config = dataclasses.replace(FINETUNE, backbone=seen)

    with pytest.raises(
        InputError,
        match=r"3 of the 12 test files \(e\.g\. C0[67]_\d\.png\) are among the files the --backbone was",
    ):
        fit(manifest, tmp_path / "model", config)


def test_a_backbone_learned_on_other_slices_is_named_in_a_warning(backbone_run, tiny_dataset, tmp_path):
    manifest = read_manifest(tiny_dataset.csv)
    other = copy_backbone(backbone_run, tmp_path)
    test_file = manifest.select("test").samples[0].path
    edit_card(other, lambda card: card["input_sha256"].update({"t": content_sha256(test_file)}))
    config = dataclasses.replace(FINETUNE, backbone=other, image_size=96)

    with (
        pytest.warns(CovidctWarning, match=r"prepared otherwise.*'image_size': \(64, 96\)"),
        pytest.raises(InputError),
    ):
        fit(manifest, tmp_path / "model", config)


def _tamper_weights(folder: Path) -> None:
    state = load_file(folder / BACKBONE_WEIGHTS)
    state["conv1.weight"] = state["conv1.weight"] + 1
    save_file(state, folder / BACKBONE_WEIGHTS)


@pytest.mark.parametrize(
    ("damage", "named", "message"),
    [
        (lambda d: shutil.rmtree(d), "", "no such folder; expected one 'covidct pretrain' wrote"),
        (
            lambda d: (d / BACKBONE_CARD).unlink(),
            BACKBONE_CARD,
            "missing; expected the card 'covidct pretrain'",
        ),
        (lambda d: (d / BACKBONE_CARD).write_text("{not json"), BACKBONE_CARD, "not valid JSON"),
        (lambda d: (d / BACKBONE_CARD).write_text("[1, 2]"), BACKBONE_CARD, "not a covidct backbone card"),
        (
            lambda d: edit_card(d, lambda c: c.pop("input_sha256")),
            BACKBONE_CARD,
            "'input_sha256' is None; expected an object",
        ),
        (
            lambda d: edit_card(d, lambda c: c.update(n_slices="36")),
            BACKBONE_CARD,
            "'n_slices' is '36'; expected a whole number",
        ),
        (lambda d: edit_card(d, lambda c: c["input_sha256"].update(x="abc")), BACKBONE_CARD, "64 hex digits"),
        (lambda d: (d / BACKBONE_WEIGHTS).unlink(), BACKBONE_WEIGHTS, "missing; backbone.json beside it"),
        (_tamper_weights, BACKBONE_WEIGHTS, r"differs from weights_sha256 in backbone\.json"),
    ],
    ids=[
        "no-folder",
        "no-card",
        "bad-json",
        "not-a-card",
        "key-missing",
        "wrong-type",
        "bad-hash",
        "no-weights",
        "tampered",
    ],
)
def test_a_bad_backbone_folder_names_the_file_and_what_is_wrong(
    backbone_run, tiny_dataset, tmp_path, damage, named, message
):
    folder = copy_backbone(backbone_run, tmp_path)
    damage(folder)
    config = dataclasses.replace(FINETUNE, backbone=folder)

    with pytest.raises(ModelDirError, match=message) as raised:
        fit(read_manifest(tiny_dataset.csv), tmp_path / "model", config)
    assert raised.value.path == str(folder / named if named else folder)
    assert not (tmp_path / "model").exists()


def test_fit_needs_start_weights(tiny_dataset, tmp_path):
    with pytest.raises(OptionError, match="fit needs start weights: pass pretrained or set config.backbone"):
        fit(read_manifest(tiny_dataset.csv), tmp_path / "model", FINETUNE)


class InterruptAfterFirstEpoch(TrainCallbacks):
    def on_epoch_end(self, record: dict, epochs: int) -> None:
        raise KeyboardInterrupt


def test_an_interrupted_run_resumes_at_the_next_epoch_and_ends_as_an_uninterrupted_one(
    backbone_run, tiny_dataset, pretrained, tmp_path
):
    inputs, out = read_unlabelled(tiny_dataset.csv), tmp_path / "backbone"
    with pytest.raises(TrainingInterrupted, match=r"after 1 completed epoch\(s\); run the same command"):
        pretrain(inputs, out, CONFIG, pretrained=pretrained, callbacks=InterruptAfterFirstEpoch())
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    saved = load_file(out / "resume" / "last-0.safetensors")
    with pytest.raises(ModelDirError, match=r"different options than the interrupted run: \['queue_size'\]"):
        pretrain(inputs, out, dataclasses.replace(CONFIG, queue_size=16), pretrained=pretrained, resume=True)
    resumed = pretrain(inputs, out, CONFIG, pretrained=pretrained, resume=True)

    assert left == [".covidct-run.json", "resume", "resume/last-0.safetensors", "resume/state.json"]
    assert {"moco.queue", "moco.queue_ptr", "moco.key.conv1.weight", "optim.0.momentum_buffer"} <= set(saved)
    assert [row["epoch"] for row in resumed.card["history"]] == [0, 1]
    assert [row["loss"] for row in resumed.card["history"]] == [
        row["loss"] for row in backbone_run.card["history"]
    ]
    assert resumed.card["weights_sha256"] == backbone_run.card["weights_sha256"]
    assert sorted(p.name for p in out.iterdir()) == [".covidct-run.json", BACKBONE_CARD, BACKBONE_WEIGHTS]


def test_a_split_of_test_rows_only_is_refused(tiny_dataset, pretrained, tmp_path):
    rows = [{"path": str(path), "split": "test"} for path in tiny_dataset.paths["COVID"][:2]]
    csv_path = tmp_path / "test_only.csv"
    csv_path.write_text("path,split\n" + "".join(f"{r['path']},{r['split']}\n" for r in rows))

    with pytest.raises(InputError, match="every row is in the test split: nothing left to pre-train on"):
        pretrain(read_unlabelled(csv_path), tmp_path / "out", CONFIG, pretrained=pretrained)


def test_an_out_folder_with_other_files_is_refused(tiny_dataset, pretrained, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(OptionError, match=r"holds files covidct did not write \(e\.g\. notes\.txt\)"):
        pretrain(read_unlabelled(tiny_dataset.csv), tmp_path, CONFIG, pretrained=pretrained)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 2}, "batch_size must be at least 4; got 2"),
        ({"bn_splits": 17}, "bn_splits must be from 1 to half the batch size"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\); got 1.0"),
        ({"max_minutes": 0}, "max_minutes must be positive; got 0"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda; got 'tpu'"),
    ],
    ids=lambda value: str(value),
)
def test_config_errors_name_the_option(options, message):
    with pytest.raises(OptionError, match=message):
        PretrainConfig(**options)


class TinyEncoder(nn.Module):
    """Stands in for the ResNet-50: a linear map to 2048 features, then ``fc`` (which MoCo replaces)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3 * 4 * 4, 2048)
        self.fc = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(images.flatten(1)))


def test_moco_moves_the_key_encoder_by_momentum_and_fills_the_queue_round_its_end():
    torch.manual_seed(0)
    moco = MoCo(TinyEncoder(), queue_size=10, momentum=0.9, temperature=0.2, bn_splits=2)
    with torch.no_grad():
        moco.query.body.weight.add_(1.0)
    key_before, queue_before = moco.key.body.weight.clone(), moco.queue.clone()

    moco(torch.rand(6, 3, 4, 4), torch.rand(6, 3, 4, 4))
    key_after_one, queue_after_one = moco.key.body.weight.clone(), moco.queue.clone()
    moco(torch.rand(6, 3, 4, 4), torch.rand(6, 3, 4, 4))

    assert torch.allclose(key_after_one, 0.9 * key_before + 0.1 * moco.query.body.weight, atol=1e-6)
    assert int(moco.queue_ptr) == 2  # 12 keys written into 10 places: the second batch wrapped round
    assert torch.equal(queue_after_one[6:], queue_before[6:])
    assert torch.equal(moco.queue[2:6], queue_after_one[2:6])
    assert not torch.equal(moco.queue[6:], queue_after_one[6:])
    assert not torch.equal(moco.queue[:2], queue_after_one[:2])
    assert torch.allclose(moco.queue.norm(dim=1), torch.ones(10))


def test_a_moco_step_backpropagates_in_fp32_with_the_queue_written_before_the_backward_pass():
    """In fp32 the negatives' matmul reads the queue itself; the keys the step writes into it must not break
    the backward pass (it once did: under bf16 autocast, the only precision the development hosts used, the
    cast had made a copy)."""
    torch.manual_seed(0)
    moco = MoCo(TinyEncoder(), queue_size=10, momentum=0.9, temperature=0.2, bn_splits=2)

    loss = moco(torch.rand(6, 3, 4, 4), torch.rand(6, 3, 4, 4))
    loss.backward()

    assert loss.dtype == torch.float32 and moco.query.body.weight.grad.abs().sum() > 0


def test_the_backbone_state_has_torchvision_names_without_the_projection_head():
    moco = MoCo(TinyEncoder(), queue_size=10, momentum=0.9, temperature=0.2, bn_splits=1)

    assert set(moco.backbone_state()) == {"body.weight", "body.bias"}
