"""Validation slices re-exported as another site might export them, a model scored on each (not a test).

    .venv/bin/python bench/reexport.py --model ucsd=DIR [--model sars=DIR] [--shared ../shared/data]
        [--out bench/results/reexport.json]

Each validation slice of the model's source is decoded at full resolution, passed through
``covidct.preprocess.augment.export_as`` with a few fixed exports (``EXPORTS``: wide and narrow
windows, a circular field of view with gray padding, and both together: the look of the hidden external
set), then prepared exactly as the model card says. Per variant: slice ROC-AUC, and sensitivity and
specificity at the card's threshold, next to the same slices as shipped. The issue's target: AUC within
0.03, sensitivity and specificity within 0.10 of as shipped. No test split is read.

``bench/recipes.py`` calls ``score_variants`` on every cross-validation fold's model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from machine import machine_facts
from shared_datasets import SOURCE_ROWS, parse_model_spec

from covidct.evaluate.metrics import binary_metrics
from covidct.io.images import read_grayscale
from covidct.model.checkpoint import load_model_dir
from covidct.model.device import supports_bf16
from covidct.model.forward import predict_logits
from covidct.preprocess.augment import Export, export_as
from covidct.preprocess.pipeline import prepare_slices

REPO = Path(__file__).resolve().parent.parent
# Fixed exports. The last one lies outside RandomExport's training range on purpose (window 2.9x as wide,
# padding 0.85, radius 0.9), so a recipe trained with --vary-export is not only scored on exports it drew.
EXPORTS = {
    "as shipped": Export(),
    "wide window (2x)": Export(contrast=0.5),
    "wide window, level up": Export(contrast=0.4, brightness=0.1),
    "narrow window (1.5x)": Export(contrast=1.5),
    "field of view, gray padding": Export(fov_radius=0.95, padding=0.5),
    "wide window + gray padding (external look)": Export(contrast=0.5, fov_radius=0.95, padding=0.6),
    "wider window + light padding (beyond training range)": Export(
        contrast=0.35, fov_radius=0.9, padding=0.85
    ),
}
# A scorer turns (H, W) float32 [0, 1] slices into (N,) probabilities of COVID.
Scorer = Callable[[Sequence[np.ndarray]], np.ndarray]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="SOURCE=DIR: a model and the source whose validation split it is scored on",
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reexport.json")
    args = parser.parse_args()
    results = {
        "machine": machine_facts(),
        "exports": {name: vars(export) for name, export in EXPORTS.items()},
        "models": {},
    }
    for source, model_dir in map(parse_model_spec, args.model):
        rows = [row for row in SOURCE_ROWS[source](args.shared) if row["split"] == "val"]
        scorer, threshold = card_scorer(model_dir)
        variants = score_variants(scorer, threshold, decode_grays(rows), labels_of(rows))
        results["models"][f"{source}={model_dir}"] = variants
        print(f"{source} model {model_dir}, {len(rows)} validation slices")
        print(markdown_table(variants))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def decode_grays(rows: list[dict]) -> list[np.ndarray]:
    """Each row's slice as (H, W) float32 in [0, 1], full resolution (what a site would export from)."""
    return [read_grayscale(Path(row["path"])) for row in rows]


def labels_of(rows: list[dict]) -> np.ndarray:
    return np.asarray([row["label"] == "COVID" for row in rows], dtype=np.int64)


def card_scorer(model_dir: Path) -> tuple[Scorer, float]:
    """A covidct model directory as a scorer (card preprocessing, calibration, TTA) and its threshold.

    Raw probabilities, not ``Predictor``'s answers: the out-of-distribution guard would withhold a
    probability for flagged slices, and these benchmarks ask how the classifier itself holds up.
    """
    model, card = load_model_dir(model_dir)
    model.eval()
    device = torch.device("cpu")
    positive = card.classes.index(card.positive_class)

    @torch.inference_mode()
    def score(grays: Sequence[np.ndarray]) -> np.ndarray:
        slices = torch.as_tensor(prepare_slices(grays, card.preprocessing))
        logits = predict_logits(
            model,
            slices,
            preprocessing=card.preprocessing,
            device=device,
            use_bf16=supports_bf16(device),
            tta_hflip=card.decision.tta_hflip,
        )
        return card.decision.probabilities(logits.numpy())[:, positive]

    return score, card.decision.threshold


def score_variants(
    scorer: Scorer,
    threshold: float,
    grays: list[np.ndarray],
    labels: np.ndarray,
    groups: Sequence[str] | None = None,
) -> dict:
    """ROC-AUC (slice; patient level with ``groups``), sensitivity and specificity per export in ``EXPORTS``.

    Each variant also records its differences from "as shipped", the figures the issue's targets bound.
    """
    variants = {}
    for name, export in EXPORTS.items():
        exported = (
            grays
            if export == Export()
            else [export_as(torch.from_numpy(gray), export).numpy() for gray in grays]
        )
        prob = scorer(exported)
        metrics = binary_metrics(labels, prob, threshold)
        variants[name] = {key: _finite(metrics[key]) for key in ("auc", "sensitivity", "specificity", "f1")}
        if groups is not None:
            variants[name]["patient_auc"] = patient_auc(labels, prob, groups)
    shipped = variants["as shipped"]
    for name, figures in variants.items():
        if name != "as shipped":
            figures["delta"] = {
                key: _delta(figures[key], shipped[key]) for key in ("auc", "sensitivity", "specificity")
            }
    return variants


def patient_auc(labels: np.ndarray, prob: np.ndarray, groups: Sequence[str]) -> float | None:
    """ROC-AUC of each patient's mean slice probability (None with fewer than 3 patients per class)."""
    names = sorted(set(groups))
    index = {name: i for i, name in enumerate(names)}
    ids = np.asarray([index[g] for g in groups])
    mean_prob = np.bincount(ids, weights=prob) / np.bincount(ids)
    patient_label = np.bincount(ids, weights=labels) / np.bincount(ids) >= 0.5
    if min(patient_label.sum(), (~patient_label).sum()) < 3:
        return None
    return _finite(binary_metrics(patient_label.astype(np.int64), mean_prob, 0.5)["auc"])


def markdown_table(variants: dict) -> str:
    lines = [
        "| export | ROC-AUC | sensitivity | specificity | delta AUC / sens / spec |",
        "|---|---|---|---|---|",
    ]
    for name, figures in variants.items():
        delta = figures.get("delta")
        shown = (
            ""
            if delta is None
            else " / ".join(_signed(delta[key]) for key in ("auc", "sensitivity", "specificity"))
        )
        lines.append(
            f"| {name} | {_fmt(figures['auc'])} | {_fmt(figures['sensitivity'])} "
            f"| {_fmt(figures['specificity'])} | {shown} |"
        )
    return "\n".join(lines)


def _finite(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _delta(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else round(value - reference, 4)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


if __name__ == "__main__":
    main()
