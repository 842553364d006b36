"""The model card's fixed keys, and model directories that round-trip or fail with a clear message."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from cards import tiny_card

from covidct.errors import ModelDirError
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.card import ModelCard, read_card, write_card
from covidct.model.checkpoint import file_sha256, load_model_dir, save_model_dir
from covidct.model.network import StrideVariant, build_resnet50

CARD_KEYS = [
    "architecture",
    "checkpoint_sha256",
    "classes",
    "covidct_version",
    "created",
    "data",
    "decision",
    "environment",
    "intended_use",
    "ood",
    "positive_class",
    "preprocessing",
    "stride_variant",
    "training",
    "validation_metrics",
    "weights",
]
DECISION_KEYS = [
    "class_bias",
    "study_aggregate",
    "study_rule_source",
    "study_topk_fraction",
    "temperature",
    "threshold",
    "threshold_rule",
    "tta_hflip",
]
PREPROCESSING_KEYS = [
    "channels",
    "circular_field",
    "crop_field",
    "fill_padding",
    "hu_window",
    "image_size",
    "mean",
    "remove_annotations",
    "resize",
    "standardise_intensity",
    "std",
]
ARCHITECTURE_KEYS = ["head", "input", "name", "stride_variant"]


def make_card(classes: tuple[str, ...] = ("COVID", "non-COVID"), **changes) -> ModelCard:
    """``tiny_card`` with a value in every section, so a round trip has something to lose."""
    recorded = {
        "weights": {"imagenet": {"source": "local file"}},
        "data": {"origin": "data.csv"},
        "training": {"epochs": 1},
        "validation_metrics": {"auc": 0.9, "n": 10},
        "environment": {"python": "3.11"},
    }
    card = tiny_card(classes, threshold=0.4, temperature=1.5, tta_hflip=True)
    return dataclasses.replace(card, **{**recorded, **changes})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 2-class ResNet-50 (random weights) saved as a model directory: (directory,
    model, card as written)."""
    torch.manual_seed(0)
    model = build_resnet50(num_classes=2).eval()
    model_dir = tmp_path_factory.mktemp("model")
    return model_dir, model, save_model_dir(model_dir, model, make_card())


def test_card_has_exactly_its_documented_keys():
    values = make_card().to_dict()

    assert sorted(values) == CARD_KEYS
    assert sorted(values["decision"]) == DECISION_KEYS
    assert sorted(values["preprocessing"]) == PREPROCESSING_KEYS
    assert sorted(values["architecture"]) == ARCHITECTURE_KEYS


def test_card_values_are_plain_json():
    values = make_card().to_dict()

    json.dumps(values, allow_nan=False)  # raises on anything JSON cannot hold
    assert values["classes"] == ["COVID", "non-COVID"]
    assert values["stride_variant"] == "v1.5"
    assert values["intended_use"] == RESEARCH_USE_STATEMENT
    assert values["architecture"]["head"] == "linear 2048 -> 2, softmax"
    assert values["architecture"]["input"] == "(N, 3, 32, 32)"


def test_a_card_from_before_study_rules_gets_the_default_rule(tmp_path):
    values = make_card().to_dict()
    values["decision"] = {"threshold": 0.4, "threshold_rule": "youden_j"}
    (tmp_path / "model.json").write_text(json.dumps(values))

    decision = read_card(tmp_path).decision

    assert (decision.study_aggregate, decision.study_topk_fraction) == ("topk", 0.25)
    assert decision.study_rule_source == "default: the model card predates study-level rules"
    assert decision.class_bias == () and decision.temperature == 1.0  # calibrated as it was trained: no bias


def test_card_round_trips_through_model_json(tmp_path):
    card = make_card(stride_variant=StrideVariant.V1)
    card = dataclasses.replace(card, decision=dataclasses.replace(card.decision, class_bias=(0.0, -0.7)))

    write_card(tmp_path, card)
    read = read_card(tmp_path)

    assert read.to_dict() == card.to_dict()
    assert (read.classes, read.positive_index, read.stride_variant, read.preprocessing, read.decision) == (
        card.classes,
        0,
        StrideVariant.V1,
        card.preprocessing,
        card.decision,
    )


def test_saved_card_records_the_weights_hash(saved):
    model_dir, _, card = saved

    assert card.checkpoint_sha256 == file_sha256(model_dir / "model.safetensors")
    assert read_card(model_dir).checkpoint_sha256 == card.checkpoint_sha256


def test_save_then_load_gives_identical_outputs(saved):
    model_dir, model, _ = saved
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    loaded, card = load_model_dir(model_dir)

    assert not loaded.training
    assert card.classes == ("COVID", "non-COVID")
    with torch.inference_mode():
        assert torch.equal(loaded(images), model(images))


def copy_model_dir(saved, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.safetensors", "model.json"):
        (model_dir / name).write_bytes((saved[0] / name).read_bytes())
    return model_dir


def _tamper_weights(model_dir):
    path = model_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_card(**changes):
    def edit(model_dir):
        path = model_dir / "model.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


def _edit_preprocessing(**changes):
    def edit(model_dir):
        path = model_dir / "model.json"
        card = json.loads(path.read_text())
        path.write_text(json.dumps({**card, "preprocessing": {**card["preprocessing"], **changes}}))

    return edit


def _replace_weights(model_dir, content: bytes):
    """Overwrite the weights and record their new hash, so the read itself must fail."""
    (model_dir / "model.safetensors").write_bytes(content)
    _edit_card(checkpoint_sha256=file_sha256(model_dir / "model.safetensors"))(model_dir)


# (id, how the directory is damaged, message)
BROKEN_DIRS = [
    (
        "tampered-weights",
        _tamper_weights,
        r"model.safetensors does not match the hash in model.json "
        r"\([0-9a-f]{12}\.\.\.\); the directory was modified or mixes two models",
    ),
    (
        "missing-card",
        lambda d: (d / "model.json").unlink(),
        "no model.json; expected a model directory written by 'covidct train'",
    ),
    (
        "missing-weights",
        lambda d: (d / "model.safetensors").unlink(),
        "no model.safetensors beside model.json",
    ),
    ("card-not-json", lambda d: (d / "model.json").write_text("{not json"), "not a valid covidct model card"),
    (
        "card-without-classes",
        lambda d: (d / "model.json").write_text('{"positive_class": "COVID"}'),
        "not a valid covidct model card",
    ),
    ("bad-stride-variant", _edit_card(stride_variant="v2"), "not a valid covidct model card"),
    (
        "bad-study-rule",
        _edit_card(decision={"threshold": 0.4, "threshold_rule": "youden_j", "study_aggregate": "median"}),
        r"study_aggregate must be mean, max or topk; got 'median'",
    ),
    (
        "topk-without-fraction",
        _edit_card(
            decision={
                "threshold": 0.4,
                "threshold_rule": "youden_j",
                "study_aggregate": "topk",
                "study_topk_fraction": None,
            }
        ),
        r"study_topk_fraction must be in \(0, 1\] for topk; got None",
    ),
    (
        "bias-per-class-mismatch",
        _edit_card(decision={"threshold": 0.4, "threshold_rule": "youden_j", "class_bias": [0.0, 0.1, 0.2]}),
        r"class_bias needs one value per class \(2\); got \[0.0, 0.1, 0.2\]",
    ),
    (
        "weights-not-safetensors",
        lambda d: _replace_weights(d, b"not safetensors"),
        r"cannot read model.safetensors \(",
    ),
    # A tampered card (issue 15): a blank hash would skip the weights check; NaN and odd sizes must not load.
    (
        "blank-hash",
        _edit_card(checkpoint_sha256=""),
        r"checkpoint_sha256 in model.json is ''; expected the "
        r"64 hex digits of the SHA-256 of model.safetensors",
    ),
    (
        "short-hash",
        _edit_card(checkpoint_sha256="abc"),
        r"checkpoint_sha256 in model.json is 'abc'; expected the 64 hex digits",
    ),
    (
        "nan-class-bias",
        _edit_card(
            decision={"threshold": 0.4, "threshold_rule": "youden_j", "class_bias": [float("nan"), 0.0]}
        ),
        r"not a valid covidct model card \(NaN is not a number a model card may hold\)",
    ),
    (
        "infinite-temperature",
        _edit_card(decision={"threshold": 0.4, "threshold_rule": "youden_j", "temperature": float("inf")}),
        r"not a valid covidct model card \(Infinity is not a number a model card may hold\)",
    ),
    (
        "image-size-zero",
        _edit_preprocessing(image_size=0),
        r"preprocessing.image_size must be a whole number of pixels from 32 to 1024; got 0",
    ),
    (
        "image-size-text",
        _edit_preprocessing(image_size="224"),
        r"preprocessing.image_size must be a whole number of pixels from 32 to 1024; got '224'",
    ),
    (
        "image-size-huge",
        _edit_preprocessing(image_size=100_000),
        r"preprocessing.image_size must be a whole number of pixels from 32 to 1024; got 100000",
    ),
]


@pytest.mark.parametrize(
    ("damage", "message"), [case[1:] for case in BROKEN_DIRS], ids=[case[0] for case in BROKEN_DIRS]
)
def test_broken_model_dirs_raise_model_dir_error(saved, tmp_path, damage, message):
    model_dir = copy_model_dir(saved, tmp_path)
    damage(model_dir)

    with pytest.raises(ModelDirError, match=message):
        load_model_dir(model_dir)


def test_a_missing_model_dir_is_named(tmp_path):
    with pytest.raises(ModelDirError, match="no model.json") as raised:
        load_model_dir(tmp_path / "absent")

    assert raised.value.path == str(tmp_path / "absent")


def test_three_class_card_on_two_class_weights_names_both_numbers(saved, tmp_path):
    model_dir = copy_model_dir(saved, tmp_path)
    _edit_card(classes=["COVID", "non-COVID", "pneumonia"])(model_dir)

    with pytest.raises(
        ModelDirError, match="model.json names 3 classes but model.safetensors has a 2-class head"
    ) as raised:
        load_model_dir(model_dir)

    assert re.search(r"\b2\b", raised.value.reason), (
        f"the weights' class count (2) is not named: {raised.value.reason}"
    )


def test_a_positive_class_missing_from_the_classes_is_a_model_dir_error(saved, tmp_path):
    model_dir = copy_model_dir(saved, tmp_path)
    _edit_card(positive_class="covid")(model_dir)

    with pytest.raises(ModelDirError, match="covid"):
        load_model_dir(model_dir)
