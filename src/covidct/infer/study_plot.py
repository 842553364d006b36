"""A study's COVID probability along the slice axis as a PNG: where in the lungs the model saw disease.

Drawn on ``matplotlib.figure.Figure`` with an Agg canvas (no pyplot, no global state), like the
evaluation figures. The plot names the study by its file path and hashed keys only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from covidct.infer.study import StudyPrediction

_SIZE_IN = (7.0, 3.6)
_DPI = 110


def plot_study(study: StudyPrediction, path: str | Path) -> Path:
    """Write the probability of each lung slice against its position, and return ``path``.

    The dashed line is the model's threshold, the dotted one the study probability; red circles mark
    the most suspicious slices (``StudyPrediction.suspicious_slices``), grey crosses the slices the
    out-of-distribution guard left out (drawn at 0). The x axis spans the whole volume, so the gaps
    are the slices without lung that were not scored.
    """
    # matplotlib here: it took 0.75 s of every predict run, with or without --plots (issue 16)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scored = [s for s in study.slices if s.prob_covid is not None]
    flagged = [s for s in study.slices if s.prob_covid is None]
    ax.plot(
        [s.index for s in scored],
        [s.prob_covid for s in scored],
        ".-",
        color="C0",
        linewidth=1,
        markersize=4,
        label="lung slice",
    )
    if flagged:
        ax.plot(
            [s.index for s in flagged], [0.0] * len(flagged), "x", color="0.5", label="left out (not CT-like)"
        )
    ax.axhline(
        study.threshold, color="C3", linestyle="--", linewidth=1, label=f"threshold {study.threshold:.3g}"
    )
    if study.prob_covid is not None:
        ax.axhline(
            study.prob_covid,
            color="C2",
            linestyle=":",
            linewidth=1.5,
            label=f"study {study.prob_covid:.3f} ({study.aggregate})",
        )
    for top in study.suspicious_slices:
        ax.plot(top.index, top.prob_covid, "o", markersize=10, markerfacecolor="none", markeredgecolor="C3")
        ax.annotate(
            str(top.index),
            (top.index, top.prob_covid),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
            color="C3",
        )
    ax.set_xlim(-0.5, max(study.n_slices_total - 0.5, 0.5))
    ax.set_ylim(-0.03, 1.08)
    ax.set_xlabel(f"slice index (0 to {study.n_slices_total - 1}; {len(study.slices)} with lung scored)")
    ax.set_ylabel("P(COVID)")
    ax.set_title(f"{Path(study.source).name}  study {study.study_key}: {study.label}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7, ncols=2)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def study_file_names(studies: Sequence[StudyPrediction], suffix: str) -> list[str]:
    """``<source name>_<study key>_<series key><suffix>`` per study: from the path and hashed
    keys, never patient data.

    The keys keep two series of one folder, or two files named alike in different folders, apart.
    """
    return [f"{_safe_stem(s.source)}_{s.study_key[:8]}_{s.series_key[:8]}{suffix}" for s in studies]


def _safe_stem(source: str) -> str:
    """The source's name without .nii/.nii.gz/.dcm, with characters unsafe in file names replaced by '_'."""
    name = Path(source).name
    stem = re.sub(r"(\.nii\.gz|\.nii|\.dcm)$", "", name, flags=re.IGNORECASE) or "study"
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)
