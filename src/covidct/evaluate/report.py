"""The files that report an evaluation.

``write_report`` writes ``metrics.json`` (a fixed shape that other
tools read), four PNG figures and a self-contained ``report.html`` that opens offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from string import Template

import numpy as np

from covidct.errors import OptionError
from covidct.evaluate.bootstrap import BootstrapResult
from covidct.evaluate.evaluation import EvaluationResult
from covidct.evaluate.figures import plot_confusion, plot_pr, plot_reliability, plot_roc
from covidct.evaluate.metrics import METRIC_NAMES
from covidct.evaluate.site_shift import STATISTIC_DESCRIPTIONS, SiteShift
from covidct.html_page import html_page
from covidct.model.decision import Aggregate

_METRIC_LABELS = {
    "auc": "ROC-AUC",
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "pr_auc": "PR-AUC (average precision)",
    "brier": "Brier score (lower is better)",
    "ece": "ECE, 10 bins (lower is better)",
}


def write_report(
    out_dir: Path,
    result: EvaluationResult,
    *,
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    model_card: dict,
    title: str,
    class_names: tuple[str, str],
    extra_notes: Sequence[str] = (),
    gallery_html: str = "",
    site_shift: SiteShift | None = None,
) -> Path:
    """Write metrics.json, roc/pr/confusion/reliability PNGs and report.html to
    ``out_dir``; return the HTML path.

    Figures show slice-level ``y_true``/``prob``. The HTML embeds them as base64 data URIs and carries
    no external CSS or JS, so the single file can be mailed or archived and still opens offline.
    ``gallery_html`` is a ready section (see ``evaluate.gallery``) placed after the figures.
    ``site_shift`` (None when the model card records no training statistics) goes into metrics.json
    as ``site_shift`` and into the report right after the slice-level metrics.

    Raises:
        OptionError: ``threshold`` differs from ``result.threshold``, or ``class_names`` is not two names.
        InputError: invalid labels or probabilities.
    """
    if not math.isclose(float(threshold), result.threshold, abs_tol=1e-12):
        raise OptionError(
            f"threshold {threshold!r} differs from the evaluated "
            f"threshold {result.threshold!r}; pass the same one."
        )
    if len(class_names) != 2:
        raise OptionError(
            f"class_names must name 2 classes (negative, positive); got {len(class_names)}: {class_names!r}."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        **result.to_json_dict(),
        "site_shift": None if site_shift is None else site_shift.to_json_dict(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    figures = {
        "ROC curve": plot_roc(y_true, prob, threshold, out_dir / "roc.png"),
        "Precision-recall curve": plot_pr(y_true, prob, threshold, out_dir / "pr.png"),
        "Confusion matrix": plot_confusion(
            y_true, prob, threshold, out_dir / "confusion.png", class_names=class_names
        ),
        "Reliability diagram": plot_reliability(y_true, prob, out_dir / "reliability.png"),
    }
    body = _BODY.substitute(
        setup=_setup_section(result, class_names),
        slice_table=_level_section(
            "Slice level",
            result.slice_level,
            sample_word="slices",
            unit_word=_slice_unit_word(result.slice_level),
        ),
        site_shift=_site_shift_section(site_shift),
        patient_table=_patient_section(result),
        figures="\n".join(_figure_html(caption, path) for caption, path in figures.items()),
        gallery=gallery_html,
        notes=_notes_section(extra_notes),
        model_card=_model_card_section(model_card),
    )
    page = html_page(title, body, extra_css=_EXTRA_CSS)
    report_path = out_dir / "report.html"
    report_path.write_text(page, encoding="utf-8")
    return report_path


def _setup_section(result: EvaluationResult, class_names: tuple[str, str]) -> str:
    positive = class_names[1]
    rule = result.aggregate.value
    if result.aggregate is Aggregate.TOPK:
        rule += f" (mean of the top {result.topk_fraction:.0%} of each patient's slices, at least one)"
    rows = [
        (
            "Decision threshold",
            f"{result.threshold:.4g} (a probability of {positive} ≥ threshold is called {positive})",
        ),
        ("Patient aggregation rule", rule if result.has_patient_ids else "not applicable (no patient ids)"),
        ("Classes", f"negative = {class_names[0]}, positive = {class_names[1]}"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{body}</table>"


def _site_shift_section(site_shift: SiteShift | None) -> str:
    """The shift flag under the slice-level metrics: a warning when the test set differs
    from the training data."""
    if site_shift is None:
        return (
            "<p class='small'>Site shift: not checked (the model card "
            "records no training-image statistics; retrain to get them).</p>"
        )
    rows = "".join(
        f"<tr><td>{html.escape(STATISTIC_DESCRIPTIONS[name])}</td>"
        f"<td>{distance:.3f}</td><td>{site_shift.threshold[name]:.3f}</td></tr>"
        for name, distance in site_shift.ks_distance.items()
    )
    css = "warn" if site_shift.is_shifted else "small"
    return (
        f"<h2>Site shift</h2><p class='{css}'>{html.escape(site_shift.note())}</p>"
        "<table><tr><th>Statistic (test vs. training data)"
        "</th><th>KS distance</th><th>Flagged above</th></tr>"
        f"{rows}</table>"
    )


def _patient_section(result: EvaluationResult) -> str:
    if result.patient_level is None:
        return (
            "<h2>Patient level</h2><p class='warn'>Not computed: "
            "no patient ids. Slice-level intervals resample "
            "slices one by one, which understates uncertainty when slices of one patient are correlated, and "
            "slices of one patient may have been in both training and test data.</p>"
        )
    return _level_section("Patient level", result.patient_level, sample_word="patients", unit_word="patients")


def _slice_unit_word(level: BootstrapResult) -> str:
    """What the slice-level bootstrap resampled, in words for the table caption."""
    if level.runs_from_groups:
        return (
            f"runs of consecutive slices (only {level.runs_from_groups} "
            "patient ids, too few to resample: each one's slices "
            "were cut into runs that stand in for scans, so the intervals are approximate)"
        )
    return "patients" if level.is_grouped else "slices"


def _level_section(heading: str, level: BootstrapResult, *, sample_word: str, unit_word: str) -> str:
    """A level's metric table (value, CI, dropped resamples) with the sample size and resampling unit."""
    caption = (
        f"n = {level.n} {sample_word}; {level.confidence:.0%} "
        f"percentile CIs from {level.n_resamples} bootstrap "
        f"resamples of the {level.n_units} {unit_word}."
    )
    rows, notes = [], []
    for name in METRIC_NAMES:
        entry, dropped = level.estimates[name], level.n_dropped[name]
        low, high = entry["ci95"]
        ci = "undefined" if math.isnan(low) else f"{_fmt(low)} &ndash; {_fmt(high)}"
        cells = (_METRIC_LABELS[name], _fmt(entry["value"]), ci, str(dropped))
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        if dropped:
            notes.append(
                f"<li>{_METRIC_LABELS[name]}: {dropped} of "
                f"{level.n_resamples} resamples dropped because the metric "
                "was undefined in them (e.g. one class only, or no predicted positives).</li>"
            )
    note_html = (
        f"<ul class='small'>{''.join(notes)}</ul>"
        if notes
        else "<p class='small'>No resample was dropped.</p>"
    )
    return (
        f"<h2>{html.escape(heading)}</h2><p class='small'>{html.escape(caption)}</p>"
        "<table><tr><th>Metric</th><th>Value</th>"
        f"<th>{level.confidence:.0%} CI</th><th>Resamples dropped</th></tr>"
        f"{''.join(rows)}</table>{note_html}"
    )


def _figure_html(caption: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _notes_section(extra_notes: Sequence[str]) -> str:
    if not extra_notes:
        return ""
    items = "".join(f"<li>{html.escape(str(note))}</li>" for note in extra_notes)
    return f"<h2>Notes</h2><ul>{items}</ul>"


def _model_card_section(model_card: dict) -> str:
    """Top-level card entries as table rows; nested values pretty-printed as JSON, all HTML-escaped."""
    rows = []
    for key, value in model_card.items():
        shown = (
            value if isinstance(value, str) else json.dumps(value, indent=2, default=str, ensure_ascii=False)
        )
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td><pre>{html.escape(shown)}</pre></td></tr>")
    return f"<h2>Model card</h2><table class='kv'>{''.join(rows)}</table>"


def _fmt(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:.3f}"


_EXTRA_CSS = """
td:nth-child(n+2) { font-variant-numeric: tabular-nums; }
pre { margin: 0; white-space: pre-wrap; }
figure { display: inline-block; margin: 0.5rem; }
img { max-width: 28rem; }
figure.cam img { max-width: 14rem; }
"""

_BODY = Template("""<h2>Setup</h2>
$setup
$slice_table
$site_shift
$patient_table
<h2>Figures (slice level)</h2>
$figures
$gallery
$notes
$model_card
""")
