"""load_model(dir).predict(paths): calibrated probabilities, labels at the card's threshold, failures kept."""

from __future__ import annotations

import dataclasses
import math
import shutil
import threading

import numpy as np
import pytest
import torch
from cards import tiny_card

from covidct import Prediction, Predictor, load_model
from covidct.errors import InputError, ModelDirError, OptionError
from covidct.model.checkpoint import save_model_dir
from covidct.model.network import build_resnet50

NOT_AN_IMAGE = "not a readable PNG, JPEG, BMP or TIFF image"

# save_random_model writes a directory without the OOD guard (as older covidct did):
# test_ood covers that warning
pytestmark = pytest.mark.filterwarnings("ignore::covidct.errors.MissingOodDetectorWarning")


def save_random_model(model_dir, classes: tuple[str, ...], *, threshold: float = 0.5, seed: int = 0):
    """A ResNet-50 with random weights behind a card for 32 x 32 inputs (predictions
    are arbitrary but valid)."""
    torch.manual_seed(seed)
    card = tiny_card(classes, threshold=threshold, temperature=2.0, tta_hflip=True)
    save_model_dir(model_dir, build_resnet50(num_classes=len(classes)), card)
    return model_dir


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return load_model(
        save_random_model(tmp_path_factory.mktemp("model"), ("COVID", "non-COVID")), device="cpu"
    )


@pytest.fixture(scope="module")
def slices(tiny_dataset):
    return tiny_dataset.paths["COVID"][:3] + tiny_dataset.paths["non-COVID"][:3]


def test_predictions_are_calibrated_probabilities(predictor, slices):
    run = predictor.predict(slices)

    assert [p.path for p in run.predictions] == [str(path) for path in slices]
    assert (run.failures, run.skipped) == ([], [])
    for prediction in run.predictions:
        assert isinstance(prediction, Prediction)
        assert 0.0 <= prediction.prob_covid <= 1.0
        assert list(prediction.probabilities) == ["COVID", "non-COVID"]
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.prob_covid == prediction.probabilities["COVID"]
        assert prediction.label == ("COVID" if prediction.prob_covid >= predictor.threshold else "non-COVID")


@pytest.mark.parametrize(
    ("threshold", "label"),
    [(0.0, "COVID"), (1.0, "non-COVID")],
    ids=["threshold-0-all-positive", "threshold-1-all-negative"],
)
def test_labels_follow_the_card_threshold(predictor, slices, threshold, label):
    card = dataclasses.replace(
        predictor.card, decision=dataclasses.replace(predictor.card.decision, threshold=threshold)
    )

    run = Predictor(predictor.model, card, device="cpu").predict(slices)

    assert {p.label for p in run.predictions} == {label}


def test_below_threshold_the_label_is_the_likeliest_other_class(tmp_path, slices):
    predictor = load_model(
        save_random_model(tmp_path / "model", ("COVID", "non-COVID", "pneumonia"), threshold=1.0),
        device="cpu",
    )

    run = predictor.predict(slices)

    for prediction in run.predictions:
        others = {name: p for name, p in prediction.probabilities.items() if name != "COVID"}
        assert prediction.label == max(others, key=others.get)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_the_card_drives_calibration_and_preprocessing(predictor, slices):
    hot = dataclasses.replace(
        predictor.card, decision=dataclasses.replace(predictor.card.decision, temperature=1000.0)
    )
    leaning = dataclasses.replace(
        hot, decision=dataclasses.replace(hot.decision, class_bias=(0.0, math.log(3.0)))
    )

    run = Predictor(predictor.model, hot, device="cpu").predict(slices)
    leaning_run = Predictor(predictor.model, leaning, device="cpu").predict(slices)

    assert predictor.card.preprocessing.image_size == 32
    assert all(p.prob_covid == pytest.approx(0.5, abs=0.01) for p in run.predictions)
    # logits / 1000 are ~0, so the probabilities are softmax(class_bias): 1 / (1 + 3) for COVID (class 0)
    assert all(p.prob_covid == pytest.approx(0.25, abs=0.01) for p in leaning_run.predictions)


def test_bad_inputs_become_failures_and_the_rest_is_predicted(predictor, slices, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("a report, not an image")
    missing = tmp_path / "missing.png"

    run = predictor.predict([slices[0], corrupt, missing, slices[1]])

    assert [p.path for p in run.predictions] == [str(slices[0]), str(slices[1])]
    assert sorted((f.path, f.reason) for f in run.failures) == sorted(
        [
            (str(corrupt), NOT_AN_IMAGE),
            (str(missing), "no such file or folder"),
        ]
    )


@pytest.mark.parametrize("batch_size", [1, 4])
def test_results_do_not_depend_on_batching_or_failures_in_a_batch(predictor, slices, tmp_path, batch_size):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("text")
    alone = {p.path: p.prob_covid for p in predictor.predict(slices).predictions}  # one batch of 6

    batched = Predictor(predictor.model, predictor.card, device="cpu", batch_size=batch_size).predict(
        [slices[0], corrupt, *slices[1:]]
    )

    assert {p.path: p.prob_covid for p in batched.predictions} == pytest.approx(alone, abs=1e-5)
    assert [f.path for f in batched.failures] == [str(corrupt)]


def test_folders_are_expanded(predictor, tiny_dataset, tmp_path):
    folder = tmp_path / "scans"
    (folder / "patient_1").mkdir(parents=True)
    for index, path in enumerate(tiny_dataset.paths["COVID"][:2]):
        shutil.copy(path, folder / "patient_1" / f"slice_{index}.png")
    shutil.copy(tiny_dataset.paths["non-COVID"][0], folder / "top.png")
    (folder / "notes.txt").write_text("not an image")

    run = predictor.predict([folder])

    # a folder's own files come before its subfolders' (os.walk order), each level sorted
    assert [p.path for p in run.predictions] == [
        str(folder / "top.png"),
        str(folder / "patient_1" / "slice_0.png"),
        str(folder / "patient_1" / "slice_1.png"),
    ]
    assert [(s.path, s.reason) for s in run.skipped] == [
        (str(folder / "notes.txt"), "not an image file type (.txt)")
    ]
    assert run.failures == []


def test_progress_reports_every_image(predictor, slices):
    seen = []

    Predictor(predictor.model, predictor.card, device="cpu", batch_size=4).predict(
        slices, progress=lambda done, total: seen.append((done, total))
    )

    assert seen == [(4, 6), (6, 6)]


def test_batch_size_must_be_positive(predictor):
    with pytest.raises(OptionError, match="^batch_size must be at least 1; got 0$"):
        Predictor(predictor.model, predictor.card, batch_size=0)


def test_load_model_on_a_folder_without_a_model(tmp_path):
    with pytest.raises(
        ModelDirError, match="no model.json; expected a model directory written by 'covidct train'"
    ):
        load_model(tmp_path)


def test_grad_cam_runs_one_call_at_a_time_across_threads(predictor, monkeypatch):
    """Grad-CAM hooks sit on the shared model: two requests' heatmaps at once could mix
    their images (issue 15)."""
    running, most = [0], [0]
    both_inside = threading.Barrier(2, timeout=2)

    def fake_heatmaps(model, slices, **options):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            both_inside.wait()  # returns only when another thread is inside at the same time
        except threading.BrokenBarrierError:
            pass
        running[0] -= 1
        return np.zeros((len(slices), 32, 32), np.float32)

    monkeypatch.setattr("covidct.infer.gradcam.gradcam_heatmaps", fake_heatmaps)
    gray = np.full((40, 40), 0.5, np.float32)
    threads = [
        threading.Thread(
            target=predictor.predict_slices, args=([f"s{i}.png"], [gray]), kwargs={"explain": True}
        )
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert most[0] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_slices_with_non_finite_values_get_no_answer(predictor, bad):
    gray = np.full((40, 40), 0.5, np.float32)
    gray[4, 4] = bad

    with pytest.raises(
        InputError,
        match=r"^upload.png: NaN or infinite pixel values; expected finite gray levels in \[0, 1\]$",
    ):
        predictor.predict_slices(["upload.png"], [gray])
