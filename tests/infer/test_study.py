"""Study-level prediction: lung slices only, the guard, the card's aggregation rule,
and the probability plot."""

from __future__ import annotations

import numpy as np
import pytest
from cards import tiny_card
from PIL import Image
from volumes import TRAINING_LIKE_WINDOW, training_like_phantom

from covidct.errors import InputError
from covidct.infer.predictor import Prediction, load_model
from covidct.infer.study import (
    N_MARKED_SLICES,
    SlicePrediction,
    StudyPrediction,
    study_prediction,
)
from covidct.infer.study_plot import plot_study, study_file_names
from covidct.io.volume import Volume, privacy_key
from covidct.preprocess.window import HuWindow


def phantom_volume(*, n_slices: int, lung, covid: bool = False, source: str = "phantom.nii.gz") -> Volume:
    """An in-memory chest CT (``volumes.training_like_phantom``) with lungs on the ``lung`` slices only."""
    hu = training_like_phantom(n_slices, lung, covid=covid)
    names = tuple(f"{source}#{index}" for index in range(n_slices))
    return Volume(source, privacy_key(f"study:{source}"), privacy_key(f"series:{source}"), hu, names)


def _slices(probs: list[float | None]) -> list[Prediction]:
    """One fake slice prediction per entry; None is a slice the guard flagged."""
    return [
        Prediction(
            f"s{i}.dcm", p, "not-ct" if p is None else "?", {}, p is not None, 99.0 if p is None else 1.0
        )
        for i, p in enumerate(probs)
    ]


PROBS = [0.1, 0.9, 0.5, 0.3]
STUDY_CASES = [
    # (card decision, slice probabilities, expected prob_covid, label, n used, message start)
    pytest.param(
        {"study_aggregate": "mean", "study_topk_fraction": None},
        PROBS,
        0.45,
        "non-COVID",
        4,
        "",
        id="mean-below-threshold",
    ),
    pytest.param(
        {"study_aggregate": "max", "study_topk_fraction": None}, PROBS, 0.9, "COVID", 4, "", id="max"
    ),
    pytest.param(
        {"study_aggregate": "topk", "study_topk_fraction": 0.5}, PROBS, 0.7, "COVID", 4, "", id="top-half"
    ),
    pytest.param({}, PROBS, 0.9, "COVID", 4, "", id="card-default-top-quarter"),
    pytest.param(
        {"study_aggregate": "mean", "study_topk_fraction": None},
        [0.1, None, 0.5, 0.3],
        0.3,
        "non-COVID",
        3,
        "1 of 4 lung slices do not look like the chest CT slices the model was trained on and were left out",
        id="flagged-slice-left-out",
    ),
    pytest.param(
        {"study_aggregate": "max", "study_topk_fraction": None},
        [None, None, 0.5, 0.3],
        0.5,
        "COVID",
        2,
        "2 of 4 lung slices",
        id="half-flagged-still-scored",
    ),
    pytest.param(
        {"study_aggregate": "max", "study_topk_fraction": None},
        [None, None, None, 0.3],
        None,
        "not-ct",
        0,
        "3 of 4 lung slices do not look like the chest CT slices the model was trained "
        "on (out-of-distribution guard), so the study gets no COVID probability",
        id="mostly-flagged-is-not-ct",
    ),
]


@pytest.mark.parametrize(("decision", "probs", "expected", "label", "n_used", "message"), STUDY_CASES)
def test_study_prediction_aggregates_by_the_card_rule(decision, probs, expected, label, n_used, message):
    volume = phantom_volume(n_slices=6, lung=range(1, 5))

    study = study_prediction(volume.origin, [1, 2, 3, 4], _slices(probs), tiny_card(**decision))

    assert study.prob_covid == (None if expected is None else pytest.approx(expected))
    assert (study.label, study.n_slices_used, study.n_slices_total, study.in_distribution) == (
        label,
        n_used,
        6,
        expected is not None,
    )
    assert study.message.startswith(message)
    assert [s.index for s in study.slices] == [1, 2, 3, 4]
    assert (study.source, study.study_key, study.series_key) == (
        volume.source,
        volume.study_key,
        volume.series_key,
    )


def test_study_ood_score_is_the_median_over_lung_slices():
    study = study_prediction(
        phantom_volume(n_slices=3, lung=range(3)).origin, [0, 1, 2], _slices([0.2, None, 0.4]), tiny_card()
    )

    assert study.ood_score == pytest.approx(1.0)


def test_suspicious_slices_are_the_highest_scored_ones_first():
    probs = [0.2, None, 0.8, 0.8, 0.1, 0.95]
    slices = tuple(SlicePrediction(f"s{i}", i, p, "?", p is not None) for i, p in enumerate(probs))
    study = StudyPrediction("x.nii", "k" * 16, "s" * 16, 0.5, "COVID", 0.5, 6, 5, "mean", slices)

    assert [s.index for s in study.suspicious_slices] == [5, 2, 3][:N_MARKED_SLICES]


def test_a_volume_without_lung_fails_with_the_file_named(tiny_model_dir):
    volume = phantom_volume(n_slices=4, lung=(), source="head_ct.nii.gz")

    with pytest.raises(
        InputError,
        match=r"head_ct\.nii\.gz: none of its 4 slices shows lung .* not a localizer, head or abdomen series",
    ):
        load_model(tiny_model_dir, device="cpu").predict_volume(volume)


def test_predict_volume_scores_only_lung_slices(tiny_model_dir):
    predictor = load_model(tiny_model_dir, device="cpu", batch_size=3, window=TRAINING_LIKE_WINDOW)
    volume = phantom_volume(n_slices=9, lung=range(2, 7), covid=True)

    study = predictor.predict_volume(volume)

    assert [s.index for s in study.slices] == [2, 3, 4, 5, 6]
    assert [s.name for s in study.slices] == list(volume.slice_names[2:7])
    assert (study.n_slices_total, study.n_slices_used, study.in_distribution, study.message) == (
        9,
        5,
        True,
        "",
    )
    # The tiny dataset has too few validation patients to choose a rule, so the card has the
    # default, top 25%: 2 of 5 slices.
    assert predictor.card.decision.study_rule_source.startswith(
        "default (top 25% mean): validation has 2 positive and 2 negative"
    )
    assert study.prob_covid == pytest.approx(np.mean(sorted(s.prob_covid for s in study.slices)[-2:]))
    assert study.label == ("COVID" if study.prob_covid >= predictor.threshold else "non-COVID")
    assert study.cam_heatmap is None


def test_a_volume_the_guard_flags_gets_no_probability(tiny_model_dir):
    # Through this window every pixel of the phantom is white: nothing like a CT slice.
    predictor = load_model(tiny_model_dir, device="cpu", window=HuWindow(-1500, 10))
    study = predictor.predict_volume(phantom_volume(n_slices=3, lung=range(3)))

    assert (study.prob_covid, study.label, study.n_slices_used, study.in_distribution) == (
        None,
        "not-ct",
        0,
        False,
    )
    assert study.message.startswith("3 of 3 lung slices do not look like")


def test_predict_volume_explained_has_the_top_slice_heatmap(tiny_model_dir):
    predictor = load_model(tiny_model_dir, device="cpu", window=TRAINING_LIKE_WINDOW)

    study = predictor.predict_volume(phantom_volume(n_slices=4, lung=range(4), covid=True), explain=True)

    size = predictor.card.preprocessing.image_size
    assert study.cam_slice.shape == study.cam_heatmap.shape == (size, size)
    assert 0.0 <= study.cam_heatmap.min() <= study.cam_heatmap.max() <= 1.0


def _study(source: str, study_key: str, series_key: str, probs: list[float | None]) -> StudyPrediction:
    slices = tuple(SlicePrediction(f"s{i}", i + 1, p, "?", p is not None, 1.0) for i, p in enumerate(probs))
    return StudyPrediction(
        source,
        study_key,
        series_key,
        0.6,
        "COVID",
        0.5,
        len(probs) + 2,
        sum(p is not None for p in probs),
        "max",
        slices,
    )


def test_plot_study_writes_a_png(tmp_path):
    path = plot_study(
        _study("/data/case 1.nii.gz", "a" * 16, "b" * 16, [0.1, 0.7, None, 0.4]), tmp_path / "plot.png"
    )

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300


def test_plot_file_names_come_from_the_path_and_hashed_keys():
    studies = [
        _study("/data/case 1.nii.gz", "a" * 16, "b" * 16, [0.1]),
        _study("/data/series_folder", "c" * 16, "d" * 16, [0.1]),
        _study("/data/series_folder", "c" * 16, "e" * 16, [0.1]),
    ]

    assert study_file_names(studies, ".png") == [
        "case_1_aaaaaaaa_bbbbbbbb.png",
        "series_folder_cccccccc_dddddddd.png",
        "series_folder_cccccccc_eeeeeeee.png",
    ]
