"""The fold models ``recipes.py --workdir`` left, scored fold by fold on their validation folds (not a test).

Shared by ``ensembles.py`` and ``tta.py``: their command line, and the resumable loop that finds each
fold's models, scores them, appends the row to ``--out`` at once and skips rows already there.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from recipes import N_FOLDS, FoldModel, fold_model_tag, fold_rows, fold_split
from shared_datasets import SOURCE_ROWS

REPO = Path(__file__).resolve().parent.parent
# score(model_dirs, validation rows) -> the row's figures; report(row) -> the line printed for it.
Score = Callable[[list[Path], list[dict]], dict]


def fold_model_parser(description: str, out_name: str) -> argparse.ArgumentParser:
    """The options every fold-model script takes; the caller adds what names its models."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", choices=sorted(SOURCE_ROWS), default="ucsd")
    parser.add_argument("--folds", default=",".join(str(f) for f in range(N_FOLDS)))
    parser.add_argument("--workdir", type=Path, required=True, help="the --workdir of bench/recipes.py")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / out_name)
    return parser


def score_fold_models(
    args: argparse.Namespace,
    name: dict,
    models: list[FoldModel],
    score: Score,
    report: Callable[[dict], str],
) -> list[dict]:
    """Score ``models`` on each of ``args.folds``; return all rows of ``name`` in ``--out``.

    ``name`` is what tells this study's rows from others in the file (e.g. ``{"model": "long-schedule@40"}``).
    """
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"rows": []}
    rows = fold_rows(SOURCE_ROWS[args.dataset](args.shared), args.dataset)
    # The models' names carry their seeds (rows before seeds also hold "seed": 0).
    study = {"dataset": args.dataset, **name, "selection": "fold"}
    for fold in [int(f) for f in args.folds.split(",")]:
        key = {**study, "fold": fold}
        if any(all(row.get(k) == v for k, v in key.items()) for row in results["rows"]):
            continue
        model_dirs = [
            args.workdir / fold_model_tag(args.dataset, m.recipe, fold, m.seed, m.minutes, "fold")
            for m in models
        ]
        missing = [str(d) for d in model_dirs if not (d / "model.json").is_file()]
        if missing:
            print(f"fold {fold}: skipped, no fold model at {', '.join(missing)}", flush=True)
            continue
        scored = [row for row in fold_split(rows, fold, "fold") if row["split"] == "val"]
        measured = datetime.now(UTC).isoformat(timespec="seconds")
        row = {**key, **score(model_dirs, scored), "measured": measured}
        results["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"fold {fold}: {report(row)}", flush=True)
    return [row for row in results["rows"] if all(row.get(k) == v for k, v in study.items())]
