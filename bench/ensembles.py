"""Ensembles of the fold models ``bench/recipes.py`` trained, scored on the same folds (not a test).

    .venv/bin/python bench/ensembles.py --dataset ucsd --members label-smoothing@20,long-schedule@40 \
        --folds 0,1,2,3,4 --workdir /tmp/cvwork

An ensemble averages its members' calibrated probabilities of COVID; its threshold is the mean of theirs
(each chosen on the fold, as ``covidct train`` chooses it). Members are ``RECIPE@MINUTES``: the fold models
``recipes.py --workdir`` left there (fold selection, seed 0), so an ensemble costs no training, only the
members' inference, which it adds up (two ResNet-50s: twice a single model's predict time). Each fold row
holds the ensemble's figures as shipped and re-exported (``bench/reexport.py``) and each member's slice and
patient ROC-AUC as shipped; rows are appended to ``--out`` and kept when the command runs again.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from recipes import N_FOLDS, fold_model_tag, fold_rows, fold_split, mean_sd, paired_ci, recipe_at_minutes
from reexport import card_scorer, decode_grays, labels_of, patient_auc, score_variants
from shared_datasets import SOURCE_ROWS

from covidct.evaluate.metrics import binary_metrics

REPO = Path(__file__).resolve().parent.parent
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SOURCE_ROWS), default="ucsd")
    parser.add_argument("--members", required=True, help="comma-separated RECIPE@MINUTES, at least two")
    parser.add_argument("--folds", default=",".join(str(f) for f in range(N_FOLDS)))
    parser.add_argument("--workdir", type=Path, required=True, help="the --workdir of bench/recipes.py")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ensembles.json")
    args = parser.parse_args()
    members = [recipe_at_minutes(spec) for spec in args.members.split(",")]
    if len(members) < 2:
        raise SystemExit(f"--members needs at least two RECIPE@MINUTES; got {args.members}")
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"rows": []}
    rows = fold_rows(SOURCE_ROWS[args.dataset](args.shared), args.dataset)
    names = [f"{recipe}@{minutes:g}" for recipe, minutes in members]
    for fold in [int(f) for f in args.folds.split(",")]:
        key = {"dataset": args.dataset, "members": names, "fold": fold, "seed": SEED, "selection": "fold"}
        if any(all(row.get(k) == v for k, v in key.items()) for row in results["rows"]):
            continue
        model_dirs = [
            args.workdir / fold_model_tag(args.dataset, recipe, fold, SEED, minutes, "fold")
            for recipe, minutes in members
        ]
        missing = [str(d) for d in model_dirs if not (d / "model.json").is_file()]
        if missing:
            print(f"fold {fold}: skipped, no fold model at {', '.join(missing)}", flush=True)
            continue
        scored = [row for row in fold_split(rows, fold, "fold") if row["split"] == "val"]
        results["rows"].append(
            {**key, **_score(model_dirs, scored), "measured": datetime.now(UTC).isoformat(timespec="seconds")}
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(
            f"fold {fold}: {results['rows'][-1]['members_auc']} -> {results['rows'][-1]['val']['as shipped']}"
        )
    _print_summary(
        [row for row in results["rows"] if row["members"] == names and row["dataset"] == args.dataset]
    )


def _score(model_dirs: list[Path], scored: list[dict]) -> dict:
    """The ensemble's figures (as shipped and re-exported) and each member's ROC-AUC as shipped."""
    scorers, thresholds = zip(*(card_scorer(d) for d in model_dirs), strict=True)
    grays, labels = decode_grays(scored), labels_of(scored)
    groups = [row["patient_id"] for row in scored]
    members = []
    for scorer in scorers:
        prob = scorer(grays)
        auc = binary_metrics(labels, prob, 0.5)["auc"]
        members.append({"auc": round(float(auc), 4), "patient_auc": patient_auc(labels, prob, groups)})
    threshold = float(np.mean(thresholds))
    ensemble = score_variants(
        lambda g: np.mean([scorer(g) for scorer in scorers], axis=0), threshold, grays, labels, groups
    )
    return {"members_auc": members, "threshold": threshold, "n_scored": len(scored), "val": ensemble}


def _print_summary(rows: list[dict]) -> None:
    """Mean ± sd over folds, as shipped, of the ensemble and of each member, and the ensemble minus each
    member on the same folds."""
    if not rows:
        print("no fold scored for these members")
        return
    folds = ", ".join(str(row["fold"]) for row in sorted(rows, key=lambda row: row["fold"]))
    print(f"{len(rows)} folds ({folds})")
    for level in ("auc", "patient_auc"):
        ensemble = [row["val"]["as shipped"][level] for row in rows]
        print(f"{level}: ensemble {mean_sd(ensemble)}")
        for i, name in enumerate(rows[0]["members"]):
            member = [row["members_auc"][i][level] for row in rows]
            paired = [e - m for e, m in zip(ensemble, member, strict=True)]
            gain = f"{mean_sd(paired, signed=True)} {paired_ci(paired)}"
            print(f"  {name} {mean_sd(member)}; ensemble minus it {gain}")


if __name__ == "__main__":
    main()
