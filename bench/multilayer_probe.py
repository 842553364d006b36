"""Frozen ImageNet features pooled from layer2, layer3 and layer4 with a logistic head, against layer4's
features alone, on the recipe study's folds (issue 13, item 3: a fast baseline; not a test).

    .venv/bin/python bench/multilayer_probe.py --dataset ucsd      # -> bench/results/multilayer_probe.json

Each (dataset, features, fold) row is written as soon as it is measured and skipped when the command runs
again, so an interrupted run goes on where it stopped.

The slices go through ``covidct train``'s default pipeline (site steps, body crop, 224 px), no
augmentation, into the ImageNet ResNet-50; each stage's maps are averaged over space (layer2: 512,
layer3: 1024, layer4: 2048 values). Per fold of ``bench/recipes.py`` (fold selection: the other four folds
train), a standardised logistic regression is fitted on the training folds with its C chosen by
patient-grouped, class-stratified 4-fold cross-validation inside them and its threshold (covidct's Youden
rule) on their out-of-fold probabilities, so unlike a fine-tuned fold model nothing is chosen on the scored
fold. The scored fold is read as shipped and re-exported (``bench/reexport.py``), as the recipe rows are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from machine import machine_facts
from recipes import N_FOLDS, fold_rows, fold_split
from reexport import decode_grays, labels_of, score_variants
from shared_datasets import SOURCE_ROWS
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from covidct.model.network import STAGES, build_resnet50, load_backbone_state, run_stages, stem
from covidct.model.pretrained import resolve_pretrained
from covidct.preprocess.pipeline import prepare_slices
from covidct.preprocess.transforms import normalize
from covidct.train.calibration import choose_threshold
from covidct.train.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
FEATURE_SETS = {"layer4": ("layer4",), "layer2-4": ("layer2", "layer3", "layer4")}
C_GRID = np.logspace(-4, 1, 11)
BATCH = 32


class PooledFeatures:
    """Each stage's spatially averaged maps for a list of slices, memoised by the slices' bytes (the
    re-exports of one fold are scored by both feature sets)."""

    def __init__(self) -> None:
        pretrained = resolve_pretrained("auto")
        self.model = build_resnet50(num_classes=2, stride_variant=pretrained.stride_variant).eval()
        load_backbone_state(self.model, pretrained.state)
        self.preprocessing = TrainConfig().preprocessing
        self._memo: dict[str, dict[str, np.ndarray]] = {}

    @torch.inference_mode()
    def __call__(self, grays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(g).tobytes() for g in grays)).hexdigest()
        if digest not in self._memo:
            prepared = prepare_slices(grays, self.preprocessing)
            parts = [self._batch(prepared[i : i + BATCH]) for i in range(0, len(prepared), BATCH)]
            self._memo[digest] = {stage: np.concatenate([p[stage] for p in parts]) for stage in STAGES}
        return self._memo[digest]

    def _batch(self, slices: np.ndarray) -> dict[str, np.ndarray]:
        x = normalize(torch.from_numpy(slices.astype(np.float32))[:, None], self.preprocessing)
        x, pooled = stem(self.model, x), {}
        for stage in STAGES:
            x = run_stages(self.model, x, (stage,))
            pooled[stage] = x.mean(dim=(2, 3)).numpy()
        return pooled


def fit_head(features: np.ndarray, labels: np.ndarray, groups: list[str]) -> tuple[object, float, float]:
    """A standardised logistic regression, C chosen by grouped, stratified inner CV; its Youden threshold
    on the out-of-fold probabilities at that C. Returns (head, C, threshold)."""
    folds = list(StratifiedGroupKFold(n_splits=4).split(features, labels, groups))
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    search = GridSearchCV(head, {"logisticregression__C": C_GRID}, cv=folds, scoring="roc_auc")
    c = float(search.fit(features, labels).best_params_["logisticregression__C"])
    head.set_params(logisticregression__C=c)
    out_of_fold = cross_val_predict(head, features, labels, cv=folds, method="predict_proba")[:, 1]
    threshold, _ = choose_threshold(labels, out_of_fold)
    return search.best_estimator_, c, threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SOURCE_ROWS), default="ucsd")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "multilayer_probe.json")
    args = parser.parse_args()
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"rows": []}
    done = {(row["dataset"], row["features"], row["fold"]) for row in results["rows"]}
    rows = fold_rows(SOURCE_ROWS[args.dataset](args.shared), args.dataset)
    features = PooledFeatures()
    all_features = features(decode_grays(rows))
    for fold in range(N_FOLDS):
        split = fold_split(rows, fold, "fold")
        train = [i for i, row in enumerate(split) if row["split"] == "train"]
        scored_rows = [row for row in split if row["split"] == "val"]
        labels, groups = labels_of(split), [row["patient_id"] for row in split]
        scored_groups = [row["patient_id"] for row in scored_rows]
        scored = (decode_grays(scored_rows), labels_of(scored_rows), scored_groups)
        for name, stages in FEATURE_SETS.items():
            if (args.dataset, name, fold) in done:
                print(f"{args.dataset} fold {fold} {name}: kept from {args.out}", flush=True)
                continue
            stacked = np.concatenate([all_features[stage] for stage in stages], axis=1)
            head, c, threshold = fit_head(stacked[train], labels[train], [groups[i] for i in train])

            def score(grays: Sequence[np.ndarray], stages=stages, head=head) -> np.ndarray:
                pooled = features(grays)
                return head.predict_proba(np.concatenate([pooled[s] for s in stages], axis=1))[:, 1]

            val = score_variants(score, threshold, *scored)
            shipped = val["as shipped"]
            print(
                f"{args.dataset} fold {fold} {name}: C {c:.3g}, slice ROC-AUC {shipped['auc']:.4f}, "
                f"patient {shipped.get('patient_auc')}",
                flush=True,
            )
            results["rows"].append(
                {
                    "dataset": args.dataset,
                    "features": name,
                    "fold": fold,
                    "C": c,
                    "threshold": threshold,
                    "n_train": len(train),
                    "n_scored": len(scored_rows),
                    "val": val,
                    "measured": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
            results["machine"] = machine_facts()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")  # resumes from here


if __name__ == "__main__":
    main()
