"""Calibration benchmark: how covidct's calibration method was chosen, on validation data only (not a test).

    .venv/bin/python bench/calibration.py --model ucsd=DIR --model sars=DIR [--repeats 20]
        [--shared ../shared/data]
        [--out bench/results/calibration.json]

Each ``--model SOURCE=DIR`` is a model trained on one shared source (ucsd: the UCSD official train/val split;
sars: SARS-CoV-2 blocks 0-7, block 8 for validation). The script computes the model's raw logits on its own
validation split (with the card's test-time flips) and compares three ways of turning them into
probabilities by repeated stratified 5-fold cross-validation on that split (fit on four folds, score the
fifth): no calibration, temperature scaling (Guo et al. 2017: ``softmax(logits / T)``) and bias-corrected
temperature scaling (``covidct.train.calibration.fit_calibration``: ``softmax(logits / T + b)``). It reports
the mean held-out ECE (10 bins) and NLL. No test split is read.

Folds split slices, not patients (SARS has no patient ids), so neighbouring slices of one scan can sit on
both sides: the figures are optimistic for every method alike, and serve to compare them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from machine import machine_facts
from shared_datasets import SOURCE_ROWS, decode_validation, parse_model_spec
from sklearn.model_selection import StratifiedKFold

from covidct.evaluate.metrics import expected_calibration_error
from covidct.infer.predictor import load_model
from covidct.model.card import calibrated_probabilities
from covidct.train.calibration import fit_calibration

REPO = Path(__file__).resolve().parent.parent
FOLDS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="SOURCE=DIR",
        help="a model trained on one shared source: ucsd=DIR or sars=DIR",
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=20, help="how many times the 5-fold split is redrawn")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "calibration.json")
    args = parser.parse_args()
    results = {"machine": machine_facts(), "folds": FOLDS, "repeats": args.repeats, "models": {}}
    for source, model_dir in map(parse_model_spec, args.model):
        logits, labels, positive_index = validation_logits(model_dir, SOURCE_ROWS[source](args.shared))
        results["models"][source] = {
            "model": str(model_dir),
            "n_validation": len(labels),
            **compare_methods(logits, labels, positive_index, args.repeats),
        }
        print(source, json.dumps(results["models"][source]["held_out"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def validation_logits(model_dir: Path, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The model's raw (N, C) logits on its source's validation split, the (N,) class indices, and the
    positive class's index."""
    predictor = load_model(model_dir)
    card = predictor.card
    rows, decoded = decode_validation(rows, card.preprocessing)
    _, logits = predictor.engine.features_and_logits(
        decoded.images, preprocessing=card.preprocessing, batch_size=32, tta_hflip=card.decision.tta_hflip
    )
    labels = torch.tensor([card.classes.index(rows[index]["label"]) for index in decoded.indices])
    return torch.from_numpy(logits).double(), labels, card.positive_index


def compare_methods(logits: torch.Tensor, labels: torch.Tensor, positive_index: int, repeats: int) -> dict:
    """Mean held-out ECE and NLL of each method over ``repeats`` stratified 5-fold splits, and each
    method fitted on all of it."""
    is_positive = (labels == positive_index).numpy().astype(int)
    scores: dict[str, dict[str, list[float]]] = {name: {"ece": [], "nll": []} for name in METHODS}
    for seed in range(repeats):
        for fit_rows, held_rows in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(
            np.zeros(len(labels)), labels
        ):
            for name, method in METHODS.items():
                temperature, bias = method(logits[fit_rows], labels[fit_rows])
                prob = torch.from_numpy(calibrated_probabilities(logits[held_rows], temperature, bias))
                scores[name]["ece"].append(
                    expected_calibration_error(is_positive[held_rows], prob[:, positive_index].numpy())
                )
                scores[name]["nll"].append(
                    float(torch.nn.functional.nll_loss(prob.clamp_min(1e-12).log(), labels[held_rows]))
                )
    fitted = {
        name: dict(zip(("temperature", "class_bias"), method(logits, labels), strict=True))
        for name, method in METHODS.items()
    }
    held_out = {
        name: {metric: round(float(np.mean(values)), 4) for metric, values in by_metric.items()}
        for name, by_metric in scores.items()
    }
    return {"held_out": held_out, "fitted_on_all_validation": fitted}


def _temperature_only(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, tuple[float, ...]]:
    """Plain temperature scaling (covidct's method before bias correction): the
    validation-NLL optimum of T alone."""
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp()), ()


METHODS = {
    "none": lambda logits, labels: (1.0, ()),
    "temperature": _temperature_only,
    "bias_corrected_temperature": fit_calibration,
}


if __name__ == "__main__":
    main()
