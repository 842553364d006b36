"""Ensembles of the fold models ``bench/recipes.py`` trained, scored on the same folds (not a test).

    .venv/bin/python bench/ensembles.py --dataset ucsd --members label-smoothing@20,long-schedule@40 \
        --folds 0,1,2,3,4 --workdir /tmp/cvwork
    .venv/bin/python bench/ensembles.py --dataset ucsd --members default@20/seed1,default@20/seed2 \
        --folds 0,1,2 --workdir /tmp/cvwork          # a seed ensemble (recipes.py --seeds 1,2 first)

An ensemble averages its members' calibrated probabilities of COVID; its threshold is the mean of theirs
(each chosen on the fold, as ``covidct train`` chooses it). Members are ``RECIPE@MINUTES[/seedN]``: the fold
models ``recipes.py --workdir`` left there (fold selection; seed 0 unless named), so an ensemble costs no
training, only the members' inference, which it adds up (two ResNet-50s: twice a single model's predict
time). Each fold row holds the ensemble's figures as shipped and re-exported (``bench/reexport.py``) and each
member's slice and patient ROC-AUC as shipped; rows are appended to ``--out`` and kept when the command
runs again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fold_models import fold_model_parser, score_fold_models
from recipes import mean_sd, paired_ci, parse_fold_model
from reexport import card_scorer, decode_grays, labels_of, patient_auc, score_variants

from covidct.evaluate.metrics import binary_metrics


def main() -> None:
    parser = fold_model_parser(__doc__.splitlines()[0], "ensembles.json")
    parser.add_argument(
        "--members", required=True, help="comma-separated RECIPE@MINUTES[/seedN], at least two"
    )
    args = parser.parse_args()
    members = [parse_fold_model(spec) for spec in args.members.split(",")]
    if len(members) < 2:
        raise SystemExit(f"--members needs at least two RECIPE@MINUTES[/seedN]; got {args.members}")
    names = [member.name for member in members]
    rows = score_fold_models(
        args,
        {"members": names},
        members,
        _score,
        lambda row: f"{row['members_auc']} -> {row['val']['as shipped']}",
    )
    _print_summary(rows)


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
