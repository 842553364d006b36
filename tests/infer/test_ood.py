"""The out-of-distribution guard: its math on Gaussian features, its file in the model directory, and what a
flagged prediction looks like."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from test_predictor import save_random_model

from covidct import load_model
from covidct.data.dataset import decode_slices
from covidct.errors import InputError, MissingOodDetectorWarning, ModelDirError
from covidct.model.card import read_card
from covidct.model.checkpoint import file_sha256
from covidct.model.network import FEATURE_DIM
from covidct.model.ood import (
    OOD_FILE,
    OodDetector,
    load_detector,
    not_ct_message,
    save_detector,
    with_threshold,
)
from covidct.train.ood_fit import fit_detector

OOD_SECTION_KEYS = sorted(
    [
        "feature_dim",
        "features",
        "file",
        "method",
        "n_train",
        "n_val",
        "n_val_groups",
        "sha256",
        "target_pass_rate",
        "threshold",
        "threshold_rule",
        "val_quantile",
        "val_pass_rate",
        "estimated_new_group_flag_rate",
    ]
)
NO_GUARD_WARNING = (
    r"model.json has no out-of-distribution detector \(trained with an older "
    r"covidct\), so no input is flagged as not a chest CT slice; retrain"
)


def gaussian_classes(
    rng: np.random.Generator, n_per_class: int, *, dim: int = 16, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of correlated Gaussian features (means +-2 on the first axis), shifted by
    ``offset`` on every axis."""
    mixing = np.eye(dim) + 0.3 * np.random.default_rng(99).normal(size=(dim, dim))
    labels = np.repeat([0, 1], n_per_class)
    means = np.zeros((2, dim))
    means[:, 0] = [-2.0, 2.0]
    features = means[labels] + rng.normal(size=(2 * n_per_class, dim)) @ mixing + offset
    return features, labels


@pytest.fixture(scope="module")
def gaussian_detector() -> OodDetector:
    rng = np.random.default_rng(0)
    detector = fit_detector(*gaussian_classes(rng, 1000))
    return with_threshold(detector, detector.scores(gaussian_classes(rng, 500)[0]))


def test_the_detector_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    detector = OodDetector(
        means=np.array([[0.0, 0.0], [10.0, 0.0]]), precision=np.diag([1.0, 0.25]), threshold=3.0
    )
    points = np.array([[0.0, 0.0], [0.0, 4.0], [9.0, 0.0], [5.0, 0.0]])

    scores = detector.scores(points)

    # sqrt(x' P x) to the nearer mean: (0,4) is 4 * sqrt(0.25) = 2 away, (5,0) is 5 away from both
    assert scores == pytest.approx([0.0, 2.0, 1.0, 5.0])
    assert detector.is_in_distribution(scores).tolist() == [True, True, True, False]


def test_about_95_percent_of_new_in_distribution_points_pass(gaussian_detector):
    fresh, _ = gaussian_classes(np.random.default_rng(7), 2000)

    pass_rate = gaussian_detector.is_in_distribution(gaussian_detector.scores(fresh)).mean()

    assert 0.93 <= pass_rate <= 0.97


@pytest.mark.parametrize("offset", [8.0, -8.0], ids=["shifted-up", "shifted-down"])
def test_far_points_are_all_flagged(gaussian_detector, offset):
    far, _ = gaussian_classes(np.random.default_rng(8), 200, offset=offset)

    assert not gaussian_detector.is_in_distribution(gaussian_detector.scores(far)).any()


@pytest.mark.parametrize("pass_rate", [0.5, 0.9, 0.95, 1.0])
def test_the_threshold_lets_at_least_the_asked_share_of_validation_scores_pass(pass_rate):
    scores = np.random.default_rng(3).gamma(2.0, size=37)

    detector = with_threshold(OodDetector(np.zeros((1, 2)), np.eye(2)), scores, pass_rate=pass_rate)

    assert np.mean(scores <= detector.threshold) >= pass_rate
    assert detector.threshold in scores


# (id, call, message)
FIT_ERRORS = [
    (
        "one-sample",
        lambda: fit_detector(np.zeros((1, 4)), np.zeros(1)),
        r"needs \(N, D\) features with N >= 2 and one label each; got features \(1, 4\) and labels \(1,\)",
    ),
    (
        "labels-mismatch",
        lambda: fit_detector(np.zeros((5, 4)), np.zeros(3)),
        r"got features \(5, 4\) and labels \(3,\)",
    ),
    (
        "no-validation",
        lambda: with_threshold(OodDetector(np.zeros((1, 2)), np.eye(2)), np.array([])),
        "the OOD threshold needs at least one validation slice",
    ),
]


@pytest.mark.parametrize(
    ("call", "message"), [case[1:] for case in FIT_ERRORS], ids=[case[0] for case in FIT_ERRORS]
)
def test_fitting_on_unusable_data_is_an_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_the_message_of_a_flagged_input():
    assert (
        not_ct_message(45.06, 30.2)
        == "does not look like a chest CT slice the model was trained on (OOD score 45.1 > threshold 30.2)"
    )


# --- the detector in a model directory ---


def test_training_writes_the_detector_and_its_card_section(tiny_model_dir):
    card = read_card(tiny_model_dir)

    assert (tiny_model_dir / OOD_FILE).is_file()
    assert sorted(card.ood) == OOD_SECTION_KEYS
    assert (card.ood["method"], card.ood["feature_dim"], card.ood["file"], card.ood["target_pass_rate"]) == (
        "mahalanobis",
        FEATURE_DIM,
        OOD_FILE,
        0.95,
    )
    assert card.ood["val_pass_rate"] >= card.ood["val_quantile"] >= 0.95
    assert (card.ood["n_train"], card.ood["n_val"]) == (24, 12)  # the tiny dataset's train and val splits


def test_the_detector_round_trips_through_the_model_dir(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(1)
    detector = OodDetector(
        rng.normal(size=(2, FEATURE_DIM)), np.diag(rng.uniform(0.5, 2.0, FEATURE_DIM)), 12.5
    )
    card = dataclasses.replace(read_card(tiny_model_dir), ood=save_detector(tmp_path, detector, n_train=3))
    features = rng.normal(size=(4, FEATURE_DIM))

    loaded = load_detector(tmp_path, card)

    assert card.ood["n_train"] == 3 and card.ood["threshold"] == 12.5
    assert loaded.threshold == 12.5
    assert loaded.scores(features) == pytest.approx(detector.scores(features), rel=1e-5)  # float32 on disk


def _copy(model_dir, tmp_path):
    copy = tmp_path / "model"
    copy.mkdir()
    for path in model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


def _rewrite_detector(model_dir):
    """A valid safetensors detector file, but not the one whose hash the card holds."""
    save_detector(model_dir, OodDetector(np.zeros((2, FEATURE_DIM)), np.eye(FEATURE_DIM), 1.0))


# (id, damage, message)
BROKEN_GUARDS = [
    (
        "missing-file",
        lambda d: (d / OOD_FILE).unlink(),
        "no ood.safetensors beside model.json, whose 'ood' section names it; copy the whole model directory",
    ),
    (
        "other-file",
        _rewrite_detector,
        "ood.safetensors does not match the hash in model.json; "
        "the directory was modified or mixes two models",
    ),
]


@pytest.mark.parametrize(
    ("damage", "message"), [case[1:] for case in BROKEN_GUARDS], ids=[case[0] for case in BROKEN_GUARDS]
)
def test_a_broken_detector_is_a_model_dir_error(tiny_model_dir, tmp_path, damage, message):
    model_dir = _copy(tiny_model_dir, tmp_path)
    damage(model_dir)

    with pytest.raises(ModelDirError, match=message):
        load_model(model_dir, device="cpu")


def _card_for(model_dir, tiny_model_dir, detector: OodDetector):
    """The tiny model's card, describing ``detector`` saved in ``model_dir`` (its hash included)."""
    return dataclasses.replace(read_card(tiny_model_dir), ood=save_detector(model_dir, detector))


def test_an_unreadable_detector_file_is_a_model_dir_error(tiny_model_dir, tmp_path):
    card = _card_for(
        tmp_path, tiny_model_dir, OodDetector(np.zeros((2, FEATURE_DIM)), np.eye(FEATURE_DIM), 1.0)
    )
    (tmp_path / OOD_FILE).write_bytes(b"not safetensors")
    card = dataclasses.replace(card, ood={**card.ood, "sha256": file_sha256(tmp_path / OOD_FILE)})

    with pytest.raises(ModelDirError, match=r"cannot read ood.safetensors \("):
        load_detector(tmp_path, card)


def test_a_detector_for_other_features_is_a_model_dir_error(tiny_model_dir, tmp_path):
    card = _card_for(tmp_path, tiny_model_dir, OodDetector(np.zeros((2, 8)), np.eye(8), 1.0))

    with pytest.raises(
        ModelDirError,
        match=r"ood.safetensors holds means \(2, 8\) and precision \(8, 8\); expected \(2048,\) features",
    ):
        load_detector(tmp_path, card)


def test_a_model_dir_without_a_detector_loads_with_a_warning(tmp_path, tiny_dataset):
    model_dir = save_random_model(tmp_path / "old", ("COVID", "non-COVID"))

    with pytest.warns(MissingOodDetectorWarning, match=NO_GUARD_WARNING):
        predictor = load_model(model_dir, device="cpu")
    run = predictor.predict(tiny_dataset.paths["COVID"][:2])

    assert json.loads((model_dir / "model.json").read_text())["ood"] is None
    assert predictor.detector is None
    assert [(p.in_distribution, p.ood_score, p.message) for p in run.predictions] == [(True, None, "")] * 2
    assert all(p.label in ("COVID", "non-COVID") and p.prob_covid is not None for p in run.predictions)


# --- predictions ---


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


def write_png(path, array: np.ndarray):
    Image.fromarray(array).save(path)
    return path


def test_a_blank_white_image_is_not_ct(predictor, tmp_path):
    white = write_png(tmp_path / "white.png", np.full((64, 64), 255, np.uint8))

    [prediction] = predictor.predict([white]).predictions

    assert (
        prediction.label,
        prediction.prob_covid,
        prediction.probabilities,
        prediction.in_distribution,
    ) == ("not-ct", None, {}, False)
    assert prediction.ood_score > predictor.detector.threshold
    assert prediction.message == not_ct_message(prediction.ood_score, predictor.detector.threshold)


def test_ct_slices_pass_and_carry_their_score(predictor, tiny_dataset):
    slices = tiny_dataset.paths["COVID"][:4] + tiny_dataset.paths["non-COVID"][:4]

    run = predictor.predict(slices)

    assert sum(p.in_distribution for p in run.predictions) >= 7
    for p in run.predictions:
        assert p.ood_score is not None and p.ood_score >= 0
        assert p.in_distribution == (p.ood_score <= predictor.detector.threshold)


def test_ood_scores_match_the_predictions(predictor, tiny_dataset):
    paths = tiny_dataset.paths["COVID"][:3]
    slices = decode_slices(paths, predictor.card.preprocessing).images

    scores = predictor.ood_scores(slices)

    assert scores == pytest.approx([p.ood_score for p in predictor.predict(paths).predictions], rel=1e-3)
