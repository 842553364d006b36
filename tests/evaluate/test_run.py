"""evaluate_model with a model directory from before the out-of-distribution guard: it still
evaluates, and says so."""

from __future__ import annotations

import csv
import html

import pytest
import torch
from cards import tiny_card

from covidct.data.manifest import read_manifest
from covidct.errors import MissingOodDetectorWarning
from covidct.evaluate.run import evaluate_model
from covidct.model.checkpoint import save_model_dir
from covidct.model.network import build_resnet50

NO_GUARD_NOTE = (
    "The model has no out-of-distribution guard (trained with an older "
    "covidct): no slice could be flagged as not a chest CT slice."
)


@pytest.fixture(scope="module")
def old_model_dir(tmp_path_factory):
    """A random 32 px ResNet-50 saved without ``ood.safetensors``, as covidct wrote model
    directories before the guard."""
    torch.manual_seed(0)
    card = tiny_card()
    model_dir = tmp_path_factory.mktemp("old") / "model"
    save_model_dir(model_dir, build_resnet50(num_classes=2), card)
    return model_dir


def test_a_model_without_the_guard_is_evaluated_and_the_report_says_so(old_model_dir, tiny_dataset, tmp_path):
    with pytest.warns(MissingOodDetectorWarning, match="model.json has no out-of-distribution detector"):
        run = evaluate_model(
            old_model_dir, read_manifest(tiny_dataset.csv), tmp_path, n_resamples=10, device="cpu"
        )

    assert (run.n_slices, run.n_flagged) == (12, None)
    assert NO_GUARD_NOTE in run.notes
    assert NO_GUARD_NOTE in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert any(
        note.startswith("Slice-level ECE ")
        and "a perfectly calibrated model with these probabilities would show" in note
        for note in run.notes
    )
    with (tmp_path / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["in_distribution"], row["ood_score"]) for row in rows} == {("", "")}


RULE_CASES = [
    pytest.param(
        None,
        "topk",
        "Patient aggregation rule: top 25% mean, the model card's study "
        "rule (default: the model card predates study-level rules).",
        id="card-rule",
    ),
    pytest.param(
        "max",
        "max",
        "Patient aggregation rule: max, set by --aggregate "
        "instead of the model card's study rule (top 25% mean).",
        id="aggregate-overrides",
    ),
]


@pytest.mark.filterwarnings("ignore::covidct.errors.MissingOodDetectorWarning")
@pytest.mark.parametrize(("aggregate", "expected", "note"), RULE_CASES)
def test_patient_level_uses_the_card_study_rule_unless_overridden(
    old_model_dir, tiny_dataset, tmp_path, aggregate, expected, note
):
    run = evaluate_model(
        old_model_dir,
        read_manifest(tiny_dataset.csv),
        tmp_path,
        aggregate=aggregate,
        n_resamples=10,
        device="cpu",
    )

    assert (run.result.aggregate.value, run.result.topk_fraction) == (expected, 0.25)
    assert note in run.notes
    assert html.escape(note) in (tmp_path / "report.html").read_text(encoding="utf-8")
