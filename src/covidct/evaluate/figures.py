"""PNG figures of an evaluation: ROC and PR curves, confusion matrix, reliability diagram.

Figures are drawn on ``matplotlib.figure.Figure`` with an Agg canvas instead of pyplot, so nothing
selects a backend or keeps figures in global state: safe in servers, threads and headless CI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from covidct.evaluate.metrics import (
    ECE_BINS,
    binary_metrics,
    check_binary_inputs,
    confusion,
    reliability_bins,
)

_SIZE_IN = (5.0, 4.5)
_DPI = 110


def plot_roc(y_true: np.ndarray, prob: np.ndarray, threshold: float, path: str | Path) -> Path:
    """Write the ROC curve, AUC in the legend and the operating point at
    ``threshold`` marked; return ``path``.

    With one class the curve is undefined; the figure then says so instead of failing.

    Raises:
        InputError: see ``check_binary_inputs``.
        OptionError: threshold outside [0, 1].
    """
    y, p = check_binary_inputs(y_true, prob)
    metrics = binary_metrics(y, p, threshold)
    fig, ax = _new_axes()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    if np.isnan(metrics["auc"]):
        _say_undefined(ax, "ROC undefined: only one class present")
    else:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color="C0", linewidth=2, label=f"ROC (AUC = {metrics['auc']:.3f})")
        ax.plot(
            1 - metrics["specificity"],
            metrics["sensitivity"],
            "o",
            color="C3",
            markersize=8,
            label=f"threshold {threshold:.3g}",
        )
    _finish(ax, "1 - specificity (false positive rate)", "sensitivity (true positive rate)", "ROC curve")
    return _save(fig, path)


def plot_pr(y_true: np.ndarray, prob: np.ndarray, threshold: float, path: str | Path) -> Path:
    """Write the precision-recall curve, average precision in the legend and the
    operating point; return ``path``.

    The dashed line is the prevalence, the precision of a random classifier.

    Raises:
        InputError: see ``check_binary_inputs``.
        OptionError: threshold outside [0, 1].
    """
    y, p = check_binary_inputs(y_true, prob)
    metrics = binary_metrics(y, p, threshold)
    fig, ax = _new_axes()
    prevalence = float(y.mean())
    ax.axhline(prevalence, linestyle="--", color="0.6", linewidth=1, label=f"prevalence {prevalence:.3f}")
    if np.isnan(metrics["pr_auc"]):
        _say_undefined(ax, "PR curve undefined: no positive samples")
    else:
        precision, recall, _ = precision_recall_curve(y, p)
        ax.step(
            recall,
            precision,
            where="post",
            color="C0",
            linewidth=2,
            label=f"PR (AP = {metrics['pr_auc']:.3f})",
        )
        if not np.isnan(metrics["ppv"]):
            ax.plot(
                metrics["sensitivity"],
                metrics["ppv"],
                "o",
                color="C3",
                markersize=8,
                label=f"threshold {threshold:.3g}",
            )
    _finish(ax, "recall (sensitivity)", "precision (PPV)", "Precision-recall curve")
    return _save(fig, path)


def plot_confusion(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    path: str | Path,
    *,
    class_names: tuple[str, str] = ("negative", "positive"),
) -> Path:
    """Write the confusion matrix at ``threshold`` as counts, rows true and columns
    predicted; return ``path``.

    Raises:
        InputError: see ``check_binary_inputs``.
        OptionError: threshold outside [0, 1].
    """
    counts = confusion(y_true, prob, threshold)
    fig, ax = _new_axes()
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for (row, col), value in np.ndenumerate(counts):
        dark = value > counts.max() / 2
        ax.text(
            col, row, str(value), ha="center", va="center", fontsize=16, color="white" if dark else "black"
        )
    ax.set_xticks([0, 1], labels=list(class_names))
    ax.set_yticks([0, 1], labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (threshold {threshold:.3g})")
    return _save(fig, path)


def plot_reliability(
    y_true: np.ndarray, prob: np.ndarray, path: str | Path, *, n_bins: int = ECE_BINS
) -> Path:
    """Write the reliability diagram (observed vs predicted per bin) over a histogram of
    ``prob``; return ``path``.

    Raises:
        InputError: see ``check_binary_inputs``.
    """
    bins = reliability_bins(y_true, prob, n_bins)
    fig = Figure(figsize=(_SIZE_IN[0], _SIZE_IN[1] + 1.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    centers = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = bins.edges[1] - bins.edges[0]
    filled = bins.count > 0
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    ax.bar(
        centers[filled],
        bins.frac_positive[filled],
        width=width * 0.9,
        color="C0",
        alpha=0.7,
        label="fraction positive per bin",
    )
    ax.plot(
        bins.mean_prob[filled],
        bins.frac_positive[filled],
        "o-",
        color="C3",
        label="at the bin's mean probability",
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction positive")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    hist.bar(centers, bins.count, width=width * 0.9, color="0.5")
    hist.set_xlim(0, 1)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("samples")
    return _save(fig, path)


def _new_axes():
    """A fresh figure with an Agg canvas and one square-ish axes."""
    fig = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _say_undefined(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="C3")


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, format="png")
    return path
