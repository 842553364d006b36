"""Cross-site generalisation benchmark with a preprocessing ablation (not a test).

    .venv/bin/python bench/generalise.py [--configs none,crop,crop+annotations,all] [--max-minutes 20]
        [--workdir DIR] [--limit N] [--shared ../shared/data] [--out bench/results/generalise.json]
        [--keep-measured]

For each ablation row (which site steps of ``covidct.preprocess.site`` are on) it trains three models
with the default ``covidct train`` recipe: on SARS-CoV-2 (blocks 0-7 train, 8 val), on UCSD (official
train/val), and on both together (a ``source`` column, so the loss balances the sources); then tests
every model on both test splits (SARS block 9, UCSD official test). Held-out-source rows (SARS -> UCSD,
UCSD -> SARS) measure generalisation to a new site; the others in-domain accuracy and calibration.
Each test records slice-level ROC-AUC, sensitivity and specificity at the threshold chosen on the
model's own validation split, and ECE, with bootstrap CIs, plus the site-shift flag evaluate raises.

Nothing is tuned here: every setting comes from validation data (the recipe's defaults, the
threshold and temperature from each model's validation split); the test splits are only scored.
``--limit`` caps the images per split and class, for a smoke test of the script, not for numbers.
The results file is rewritten after every model; ``--keep-measured`` keeps the rows already in it
(measured with the same recipe and limit) and trains only the missing ones: an interrupted run goes on,
and rows can be added to a table (e.g. ``--train-sets both`` for one config).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from accuracy import EpochPrinter
from machine import machine_facts
from shared_datasets import sars_rows, ucsd_rows, write_manifest

from covidct.data.manifest import read_manifest
from covidct.evaluate.run import evaluate_model
from covidct.model.pretrained import resolve_pretrained
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

REPO = Path(__file__).resolve().parent.parent
STEPS = ("crop_field", "remove_annotations", "standardise_intensity")
CONFIGS = {
    "none": (),
    "crop": ("crop_field",),
    "crop+annotations": ("crop_field", "remove_annotations"),
    "intensity": ("standardise_intensity",),
    "all": STEPS,
}
TRAIN_SETS = ("sars", "ucsd", "both")
REPORTED = ("auc", "sensitivity", "specificity", "ece")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "generalise.json")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where manifests, models and reports go (default: a temporary folder)",
    )
    parser.add_argument(
        "--configs",
        default="none,crop,crop+annotations,all",
        help=f"comma-separated ablation rows, of: {', '.join(CONFIGS)}",
    )
    parser.add_argument(
        "--train-sets", default="sars,ucsd,both", help="comma-separated, of: sars, ucsd, both"
    )
    parser.add_argument("--max-minutes", type=float, default=20.0, help="training time budget per model")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many images per split and class (smoke tests only)",
    )
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples per metric")
    parser.add_argument(
        "--keep-measured",
        action="store_true",
        help="keep the rows already in --out (same recipe and limit) and train only the missing ones",
    )
    args = parser.parse_args()
    configs = _choose(args.configs, CONFIGS, "--configs")
    train_sets = _choose(args.train_sets, dict.fromkeys(TRAIN_SETS), "--train-sets")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="covidct-generalise-"))
    rows = {
        "sars": _limited(sars_rows(args.shared), args.limit),
        "ucsd": _limited(ucsd_rows(args.shared), args.limit),
    }
    rows["both"] = rows["sars"] + rows["ucsd"]
    manifests = {name: read_manifest(write_manifest(rows[name], workdir / f"{name}.csv")) for name in rows}
    pretrained = resolve_pretrained("auto")
    results = {
        "machine": machine_facts(),
        "recipe": TrainConfig(max_minutes=args.max_minutes).to_dict(),
        "imagenet_weights": pretrained.provenance,
        "limit": args.limit,
        "configs": {},
        "runs": {},
    }
    if args.keep_measured:
        results = _measured(args.out, results)
    results["configs"] |= {name: list(CONFIGS[name]) for name in configs}
    for config_name in configs:
        config = TrainConfig(
            max_minutes=args.max_minutes, **{step: step in CONFIGS[config_name] for step in STEPS}
        )
        for train_name in train_sets:
            key = f"{config_name}: {train_name}"
            if key in results["runs"]:
                print(f"{key}: kept from {args.out}", flush=True)
                continue
            results["runs"][key] = _train_and_test(
                config, config_name, train_name, manifests, pretrained, workdir, args.n_resamples
            )
            _write(args.out, results)  # after every model, so an interrupted run keeps what it measured
    order = [f"{config}: {train}" for config in CONFIGS for train in TRAIN_SETS]
    results["runs"] = dict(sorted(results["runs"].items(), key=lambda item: order.index(item[0])))
    results["table"] = markdown_table(results["runs"])
    _write(args.out, results)
    print(results["table"])
    print(f"wrote {args.out} (models and reports in {workdir})")


def _train_and_test(
    config: TrainConfig,
    config_name: str,
    train_name: str,
    manifests: dict,
    pretrained,
    workdir: Path,
    n_resamples: int,
) -> dict:
    tag = f"{config_name}-{train_name}".replace("+", "_")
    started = time.perf_counter()
    trained = fit(
        manifests[train_name],
        workdir / f"model-{tag}",
        config,
        pretrained=pretrained,
        callbacks=EpochPrinter(tag),
    )
    record = {
        "config": config_name,
        "train": train_name,
        "train_wall_time_s": round(time.perf_counter() - started, 1),
        "epochs_run": trained.card.training["epochs_run"],
        "best_epoch": trained.card.training["best_epoch"],
        "validation": trained.card.validation_metrics,
        "threshold": trained.card.decision.threshold,
        "temperature": trained.card.decision.temperature,
        "tests": {},
    }
    for test_name in ("sars", "ucsd"):
        run = evaluate_model(
            trained.model_dir,
            manifests[test_name],
            workdir / f"eval-{tag}-on-{test_name}",
            split="test",
            n_resamples=n_resamples,
        )
        slice_level = run.result.slice_level.to_json_dict()
        record["tests"][test_name] = {
            "kind": "in-domain" if train_name in (test_name, "both") else "held-out source",
            "n": slice_level["n"],
            **{name: slice_level[name] for name in REPORTED},
            "site_shift": None if run.site_shift is None else run.site_shift.to_json_dict(),
        }
        auc = slice_level["auc"]
        print(
            f"{config_name}: {train_name} -> {test_name} test: ROC-AUC {auc['value']:.3f} {auc['ci95']}",
            flush=True,
        )
    return record


def _measured(path: Path, fresh: dict) -> dict:
    """The results already in ``path`` (``fresh`` when there is none); exits when they were measured with
    another recipe, limit or weights."""
    if not path.exists():
        return fresh
    earlier = json.loads(path.read_text(encoding="utf-8"))
    same = all(earlier.get(key) == fresh[key] for key in ("recipe", "limit", "imagenet_weights"))
    if not same:
        raise SystemExit(
            f"{path} was measured with another recipe, limit or "
            "weights; drop --keep-measured or choose another --out"
        )
    return {**earlier, "machine": fresh["machine"]}


def markdown_table(runs: dict) -> str:
    """The ablation as a BENCHMARKS.md table: one row per (config, training set, test split)."""
    lines = [
        "| site steps | trained on -> tested on | kind | ROC-AUC "
        "[95% CI] | sensitivity | specificity | ECE | shift flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in runs.values():
        for test_name, test in record["tests"].items():
            auc = test["auc"]
            shift = (
                "n/a"
                if test["site_shift"] is None
                else ("yes" if test["site_shift"]["likely_shift"] else "no")
            )
            lines.append(
                f"| {record['config']} | {record['train']} -> {test_name} test | {test['kind']} "
                f"| {_fmt(auc['value'])} [{_fmt(auc['ci95'][0])}, {_fmt(auc['ci95'][1])}] "
                f"| {_fmt(test['sensitivity']['value'])} | {_fmt(test['specificity']['value'])} "
                f"| {_fmt(test['ece']['value'])} | {shift} |"
            )
    return "\n".join(lines)


def _limited(rows: list[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` rows per (split, label), drawn with a fixed seed; all rows without a limit."""
    if limit is None:
        return rows
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        cells.setdefault((row["split"], row["label"]), []).append(row)
    rng = random.Random(0)
    return [
        row for cell in cells.values() for row in (rng.sample(cell, limit) if len(cell) > limit else cell)
    ]


def _choose(text: str, known: dict, option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SystemExit(f"{option}: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
    return names


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
