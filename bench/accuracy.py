"""Accuracy benchmark on the shared datasets with leak-free splits (not a test).

    .venv/bin/python bench/accuracy.py [--shared ../shared/data] [--out bench/results/accuracy.json]

(a) UCSD official split, (b) SARS-CoV-2 blocks 0-7 train / 8 val / 9 test, each trained with the default
``covidct train`` recipe (plus ``--max-minutes 20``, the issue's budget) and evaluated on its own test split;
(c) cross-dataset: the SARS model on the UCSD test split and the UCSD model on SARS block 9. Records every
metric with bootstrap CIs, training wall time and the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from machine import machine_facts
from shared_datasets import sars_rows, ucsd_rows, write_manifest

from covidct.data.manifest import read_manifest
from covidct.evaluate.run import evaluate_model
from covidct.model.pretrained import resolve_pretrained
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "accuracy.json")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where models and reports go (default: a temporary folder)"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=20.0,
        help="training time budget per run (the issue's 20 minutes)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="covidct-accuracy-"))
    manifests = {
        "ucsd": read_manifest(write_manifest(ucsd_rows(args.shared), workdir / "ucsd.csv")),
        "sars": read_manifest(write_manifest(sars_rows(args.shared), workdir / "sars.csv")),
    }
    pretrained = resolve_pretrained("auto")
    config = TrainConfig(max_minutes=args.max_minutes)
    results = {
        "machine": machine_facts(),
        "recipe": config.to_dict(),
        "imagenet_weights": pretrained.provenance,
        "runs": {},
    }
    for name, manifest in manifests.items():
        started = time.perf_counter()
        trained = fit(
            manifest, workdir / f"model-{name}", config, pretrained=pretrained, callbacks=EpochPrinter(name)
        )
        train_seconds = time.perf_counter() - started
        for test_name, test_manifest in manifests.items():
            run = evaluate_model(
                trained.model_dir, test_manifest, workdir / f"eval-{name}-on-{test_name}", split="test"
            )
            key = name if test_name == name else f"{name}->{test_name}"
            results["runs"][key] = {
                "train": name,
                "test": f"{test_name} test split",
                "train_wall_time_s": round(train_seconds, 1),
                "best_epoch": trained.card.training["best_epoch"],
                "epochs_run": trained.card.training["epochs_run"],
                "validation": trained.card.validation_metrics,
                "threshold": trained.card.decision.threshold,
                "temperature": trained.card.decision.temperature,
                "test_metrics": run.result.to_json_dict(),
            }
            auc = run.result.slice_level.to_json_dict()["auc"]
            print(
                f"{key}: test ROC-AUC {auc['value']:.3f} {auc['ci95']} "
                f"(training {train_seconds / 60:.1f} min)",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} (models and reports in {workdir})")


class EpochPrinter(TrainCallbacks):
    """One line per epoch, so a long benchmark shows where it is."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_epoch_end(self, record: dict, epochs: int) -> None:
        print(
            f"{self.name} epoch {record['epoch'] + 1}/{epochs}: val "
            f"AUC {record['val_auc']:.3f} ({record['seconds']:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
