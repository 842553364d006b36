"""Validation-only probes of methods that might carry a model across sites (not a test; nothing here ships).

    .venv/bin/python bench/cross_site_probes.py frozen [--shared ../shared/data]
    .venv/bin/python bench/cross_site_probes.py adabn --model ucsd=DIR --model sars=DIR
        [--shared ../shared/data]
    (both write bench/results/cross_site_probes.json, adding their part to what is there)

``frozen``: candidate site steps beyond covidct's (a lung-field mask, intensity standardisation or histogram
equalisation inside it, histogram equalisation inside the body), each applied after covidct's default crop
and annotation removal. Frozen ImageNet ResNet-50 features and a logistic regression (C = 0.1) trained on
300 random training slices of one source, scored on both validation splits (SARS block 8, UCSD val).

``adabn``: test-time adaptation of trained models (Li et al. 2016, "Revisiting batch normalization for
practical domain adaptation"): every BatchNorm's statistics re-estimated on the unlabelled validation
slices of the split being scored, for each model on both sources' validation splits.

Only validation splits are read; a method would have to beat the baseline here before it
is tried on a test split.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import machine_facts
from scipy import ndimage
from shared_datasets import SOURCE_ROWS, decode_validation, parse_model_spec
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from covidct.data.dataset import decode_slices
from covidct.model.checkpoint import load_model_dir
from covidct.model.forward import predict_logits
from covidct.model.network import build_resnet50, extract_features, load_backbone_state
from covidct.model.pretrained import resolve_pretrained
from covidct.preprocess import site
from covidct.preprocess.transforms import Preprocessing, normalize
from covidct.train.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
PROBE_ORDER = ("sars", "ucsd")  # the frozen probe draws its training samples in this order
TRAIN_SLICES = 300
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("frozen", "adabn"))
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="SOURCE=DIR",
        help="adabn: a model trained on one shared source",
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cross_site_probes.json")
    args = parser.parse_args()
    rows = {source: SOURCE_ROWS[source](args.shared) for source in PROBE_ORDER}
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    results["machine"] = machine_facts()
    if args.probe == "frozen":
        results["frozen"] = frozen_probe(rows)
    else:
        if not args.model:
            raise SystemExit("adabn needs --model SOURCE=DIR (at least one)")
        results["adabn"] = {
            source: adabn_probe(model_dir, rows) for source, model_dir in map(parse_model_spec, args.model)
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results[args.probe], indent=1))


def frozen_probe(rows: dict[str, list[dict]]) -> dict:
    """Variant -> {"SARS->UCSD val": AUC, ...}: a logistic regression on frozen
    features per training source."""
    rng = random.Random(0)
    sets = {}
    for source, source_rows in rows.items():
        sets[f"{source}_train"] = rng.sample(
            [row for row in source_rows if row["split"] == "train"], TRAIN_SLICES
        )
        sets[f"{source}_val"] = [row for row in source_rows if row["split"] == "val"]
    pretrained = resolve_pretrained("auto")
    model = build_resnet50(num_classes=2, stride_variant=pretrained.stride_variant)
    load_backbone_state(model, pretrained.state)
    model.eval()
    preprocessing = TrainConfig().preprocessing  # covidct train's default site steps
    features, labels = {}, {}
    for name, set_rows in sets.items():
        decoded = decode_slices([Path(row["path"]) for row in set_rows], preprocessing)
        labels[name] = np.array([set_rows[index]["label"] == "COVID" for index in decoded.indices], dtype=int)
        slices = decoded.images.astype(np.float32)
        for variant, step in VARIANTS.items():
            changed = torch.from_numpy(np.stack([step(gray) for gray in slices]))
            features[variant, name] = predict_logits(
                lambda x: extract_features(model, x),
                changed,
                preprocessing=preprocessing,
                device=CPU,
                use_bf16=True,
            ).numpy()
        print(f"{name}: {len(slices)} slices", flush=True)
    table = {}
    for variant in VARIANTS:
        table[variant] = {}
        for train in rows:
            classifier = LogisticRegression(C=0.1, max_iter=3000).fit(
                features[variant, f"{train}_train"], labels[f"{train}_train"]
            )
            for val in rows:
                scores = classifier.predict_proba(features[variant, f"{val}_val"])[:, 1]
                table[variant][f"{train.upper()}->{val.upper()} val"] = round(
                    float(roc_auc_score(labels[f"{val}_val"], scores)), 3
                )
    return table


def lung_field(gray: np.ndarray) -> np.ndarray:
    """A rough lung mask of a (S, S) slice: dark regions inside the body's hull, closed, filled and dilated.

    Aerated lung is below Otsu's lower threshold; closing and hole filling take in opacities and vessels
    inside it. Falls back to the whole slice when nothing lung-like (over 5% of the slice) is found.
    """
    body = site.find_body(gray)
    thresholds = site.otsu_thresholds(gray)
    everything = np.ones_like(gray, dtype=bool)
    if not body.found or thresholds is None:
        return everything
    dark = ndimage.binary_opening(body.hull & (gray < thresholds[0]), iterations=2)
    labels, count = ndimage.label(dark)
    if count == 0:
        return everything
    areas = ndimage.sum_labels(dark, labels, np.arange(1, count + 1))
    lungs = np.isin(labels, np.flatnonzero(areas >= 0.1 * areas.max()) + 1)
    lungs = ndimage.binary_fill_holes(ndimage.binary_closing(lungs, iterations=8))
    return ndimage.binary_dilation(lungs, iterations=3) if lungs.mean() >= 0.05 else everything


def _equalised(gray: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Histogram equalisation of ``gray`` inside ``field`` (the empirical CDF of the
    field's values), 0 outside."""
    values = np.sort(gray[field])
    return np.where(field, np.searchsorted(values, gray, side="right") / len(values), 0.0).astype(np.float32)


def _masked(
    gray: np.ndarray, step: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    field = lung_field(gray)
    return np.where(field, gray if step is None else step(gray, field), 0.0).astype(np.float32)


VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "covidct default (crop + annotation removal)": lambda gray: gray,
    "+ lung-field mask": _masked,
    "+ lung-field mask + intensity standardisation in it": lambda gray: _masked(
        gray, site.standardise_intensity
    ),
    "+ lung-field mask + histogram equalisation in it": lambda gray: _masked(gray, _equalised),
    "+ histogram equalisation in the body": lambda gray: _equalised(gray, site.find_body(gray).hull),
}


def _auc(net: torch.nn.Module, images: torch.Tensor, is_positive: np.ndarray, card) -> float:
    """Validation ROC-AUC of ``net`` on the prepared ``images``, rounded to 3 decimals."""
    logits = predict_logits(
        net,
        images,
        preprocessing=card.preprocessing,
        device=CPU,
        use_bf16=True,
        tta_hflip=card.decision.tta_hflip,
    )
    return round(
        float(roc_auc_score(is_positive, torch.softmax(logits, 1)[:, card.positive_index].numpy())), 3
    )


def adabn_probe(model_dir: Path, rows: dict[str, list[dict]]) -> dict:
    """Validation split -> {"as trained": AUC, "adabn": AUC} for one model."""
    model, card = load_model_dir(model_dir)
    preprocessing = card.preprocessing
    table = {}
    for source, source_rows in rows.items():
        val_rows, decoded = decode_validation(source_rows, preprocessing)
        is_positive = np.array(
            [val_rows[index]["label"] == card.positive_class for index in decoded.indices], dtype=int
        )
        images = torch.from_numpy(decoded.images)
        adapted = batch_norm_adapted(model, images, preprocessing)
        table[f"{source.upper()} val"] = {
            "as trained": _auc(model, images, is_positive, card),
            "adabn": _auc(adapted, images, is_positive, card),
        }
        print(model_dir, source, table[f"{source.upper()} val"], flush=True)
    return table


def batch_norm_adapted(
    model: torch.nn.Module, slices: torch.Tensor, preprocessing: Preprocessing, batch_size: int = 32
) -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are the (cumulative) statistics of ``slices``."""
    adapted = copy.deepcopy(model)
    for module in adapted.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over all batches
    adapted.train()
    order = torch.randperm(len(slices), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            batch = slices[order[start : start + batch_size]].float().unsqueeze(1)
            if len(batch) > 1:
                adapted(normalize(batch, preprocessing))
    return adapted.eval()


if __name__ == "__main__":
    main()
