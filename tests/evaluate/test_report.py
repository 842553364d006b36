"""evaluation_metrics' fixed metrics.json shape, and the files write_report leaves behind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from covidct.errors import OptionError
from covidct.evaluate.evaluation import evaluation_metrics
from covidct.evaluate.figures import plot_pr, plot_roc
from covidct.evaluate.metrics import METRIC_NAMES
from covidct.evaluate.report import write_report
from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.decision import Aggregate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LEVEL_KEYS = {
    "n",
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "pr_auc",
    "brier",
    "ece",
}
SCRIPT = "<script>alert('card')</script>"


@pytest.fixture(scope="module")
def slices():
    """20 patients x 6 slices; labels per patient, probabilities noisy around the label."""
    rng = np.random.default_rng(5)
    patient_label = np.tile([0, 1], 10)
    y = np.repeat(patient_label, 6)
    prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, y.size), 0, 1)
    groups = np.repeat([f"P{i:02d}" for i in range(20)], 6)
    return y, prob, groups


@pytest.fixture(scope="module")
def written(slices, tmp_path_factory):
    y, prob, groups = slices
    result = evaluation_metrics(y, prob, 0.5, groups=groups, aggregate=Aggregate.MAX, n_resamples=100)
    out = tmp_path_factory.mktemp("report")
    path = write_report(
        out,
        result,
        y_true=y,
        prob=prob,
        threshold=0.5,
        model_card={"name": SCRIPT, "classes": ["non-COVID", "COVID"], "preprocessing": {"size": 224}},
        title="Test set <evaluation>",
        class_names=("non-COVID", "COVID"),
        extra_notes=["Threshold chosen on validation & fixed."],
    )
    return out, path, result


def test_metrics_json_has_exactly_the_documented_keys(written):
    out, _, result = written
    data = json.loads((out / "metrics.json").read_text())
    assert data == {**result.to_json_dict(), "site_shift": None}
    assert set(data) == {"slice_level", "patient_level", "threshold", "site_shift"}
    assert data["threshold"] == 0.5
    for level in ("slice_level", "patient_level"):
        assert set(data[level]) == LEVEL_KEYS
        for name in METRIC_NAMES:
            assert set(data[level][name]) == {"value", "ci95"}
            assert len(data[level][name]["ci95"]) == 2
    assert data["slice_level"]["n"] == 120
    assert data["patient_level"]["n"] == 20


def test_slice_level_resamples_patients_and_patient_level_uses_the_rule(written):
    _, _, result = written
    assert result.aggregate is Aggregate.MAX
    assert result.slice_level.is_grouped and result.slice_level.n_units == 20
    assert result.patient_level.n_units == 20
    assert result.slice_level.n_dropped.keys() == set(METRIC_NAMES)


def test_without_patient_ids_patient_level_is_null(slices):
    y, prob, _ = slices
    result = evaluation_metrics(y, prob, 0.5, n_resamples=20)
    data = result.to_json_dict()
    assert data["patient_level"] is None
    assert set(data["slice_level"]) == LEVEL_KEYS
    assert not result.slice_level.is_grouped and result.slice_level.n_units == 120


def test_a_report_says_when_runs_of_slices_stood_in_for_too_few_patients(slices, tmp_path):
    y, prob, _ = slices
    blocks = np.where(y == 1, "covid-block9", "normal-block9")  # SARS-CoV-2: one group id per class
    result = evaluation_metrics(y, prob, 0.5, groups=blocks, n_resamples=50)

    write_report(
        tmp_path, result, y_true=y, prob=prob, threshold=0.5, model_card={}, title="t", class_names=("a", "b")
    )

    assert result.slice_level.runs_from_groups == 2 and result.slice_level.n_units == 10
    assert (
        "resamples of the 10 runs of consecutive slices (only 2 patient ids, too few to resample"
        in (tmp_path / "report.html").read_text()
    )


def test_undefined_metrics_are_written_as_null(tmp_path):
    y, prob = np.zeros(8, int), np.linspace(0.05, 0.95, 8)
    result = evaluation_metrics(y, prob, 0.5, n_resamples=20)
    write_report(
        tmp_path, result, y_true=y, prob=prob, threshold=0.5, model_card={}, title="t", class_names=("a", "b")
    )
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["slice_level"]["auc"] == {"value": None, "ci95": [None, None]}
    assert (
        "ROC-AUC</td><td>undefined</td><td>undefined</td><td>20</td>"
        in (tmp_path / "report.html").read_text()
    )


def test_report_writes_every_file_as_png_or_html(written):
    out, path, _ = written
    assert path == out / "report.html"
    for name in ("roc.png", "pr.png", "confusion.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name


def test_report_html_is_self_contained_and_says_research_use_only(written):
    _, path, _ = written
    page = path.read_text(encoding="utf-8")
    assert RESEARCH_USE_STATEMENT in page
    assert page.count("data:image/png;base64,") == 4
    assert "<link" not in page and "src='http" not in page and 'src="http' not in page


def test_report_html_escapes_the_model_card_title_and_notes(written):
    _, path, _ = written
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;card&#x27;)&lt;/script&gt;" in page
    assert "Test set &lt;evaluation&gt;" in page
    assert "Threshold chosen on validation &amp; fixed." in page


def test_report_html_shows_tables_threshold_and_rule(written):
    _, path, result = written
    page = path.read_text(encoding="utf-8")
    assert "<h2>Slice level</h2>" in page and "<h2>Patient level</h2>" in page
    assert "n = 120 slices" in page and "resamples of the 20 patients" in page
    assert "<th>Patient aggregation rule</th><td>max</td>" in page
    assert "<th>Decision threshold</th><td>0.5 " in page
    auc = result.patient_level.estimates["auc"]["value"]
    assert f"<td>ROC-AUC</td><td>{auc:.3f}</td>" in page


def test_report_rejects_a_threshold_other_than_the_evaluated_one(slices, tmp_path):
    y, prob, _ = slices
    result = evaluation_metrics(y, prob, 0.5, n_resamples=10)
    with pytest.raises(OptionError, match="threshold 0.4 differs from the evaluated threshold 0.5"):
        write_report(
            tmp_path,
            result,
            y_true=y,
            prob=prob,
            threshold=0.4,
            model_card={},
            title="t",
            class_names=("a", "b"),
        )


def test_curves_of_a_single_class_are_drawn_with_a_note_not_an_error(tmp_path):
    y, prob = np.ones(5, int), np.linspace(0.1, 0.9, 5)
    assert plot_roc(y, prob, 0.5, tmp_path / "roc.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_pr(1 - y, prob, 0.5, tmp_path / "pr.png").read_bytes()[:8] == PNG_MAGIC


def test_patient_level_metrics_score_aggregated_patients(slices):
    y, prob, groups = slices
    result = evaluation_metrics(y, prob, 0.5, groups=groups, aggregate=Aggregate.MEAN, n_resamples=10)
    patient_prob = prob.reshape(20, 6).mean(axis=1)
    patient_y = y.reshape(20, 6)[:, 0]
    expected_accuracy = np.mean((patient_prob >= 0.5) == patient_y)
    assert math.isclose(result.patient_level.estimates["accuracy"]["value"], expected_accuracy)
