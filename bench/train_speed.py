"""Training speed benchmark (not a test): wall time to reach validation ROC-AUC 0.93
on the UCSD official split.

    .venv/bin/python bench/train_speed.py [--shared ../shared/data] [--max-minutes 60] [--target-auc 0.93]
        [--out bench/results/train_speed.json]

Two arms on the same data (UCSD official train split for training, its val split after every epoch),
from the same ImageNet weights (``--weights``, default ``auto``):

- ``covidct``: ``fit`` with the default ``covidct train`` recipe (bf16 autocast where supported,
  channels_last, AdamW with warm-up and cosine, EMA, decoded slices held in memory);
- ``baseline``: a plain fp32 full fine-tune, what a typical script does: torchvision's ResNet-50 with
  a new 2-way head, eager fp32, NCHW, Adam (lr 1e-4), batch 32, RandomResizedCrop + flip, images
  decoded once into memory with PIL (so neither arm pays for file I/O per epoch).

Each arm's clock starts before it reads the data and stops at the end of the first epoch whose
validation AUC reaches ``--target-auc``, or at ``--max-minutes``; the best AUC it reached is kept
either way. The ratio (baseline time / covidct time, the issue's target is >= 3) is recorded only
when both arms reached the target. ``--limit N`` keeps N random slices per split: a smoke run, not a
measurement. Writes ``bench/results/train_speed.json`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_facts
from PIL import Image
from shared_datasets import ucsd_rows, write_manifest
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision.transforms import v2

from covidct.data.manifest import read_manifest
from covidct.model.network import build_resnet50, load_backbone_state
from covidct.model.pretrained import resolve_pretrained
from covidct.preprocess.transforms import IMAGENET_MEAN, IMAGENET_STD
from covidct.train.callbacks import TrainCallbacks
from covidct.train.config import TrainConfig
from covidct.train.trainer import fit

REPO = Path(__file__).resolve().parent.parent
SPEEDUP_TARGET = 3.0
BATCH = 32
BASELINE_LR = 1e-4
BASELINE_MAX_EPOCHS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_speed.json")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="time cap per arm")
    parser.add_argument("--target-auc", type=float, default=0.93)
    parser.add_argument(
        "--weights", default="auto", help="ImageNet weights for both arms (covidct train --weights)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="keep this many random slices per split (smoke runs only)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="covidct-train-speed-"))
    rows = _limited(ucsd_rows(args.shared), args.limit)
    manifest_path = write_manifest(rows, workdir / "ucsd.csv")
    pretrained = resolve_pretrained(args.weights)
    config = TrainConfig()
    arms = {
        "covidct": _covidct_arm(manifest_path, workdir, config, pretrained, args),
        "baseline": _baseline_arm(rows, pretrained, args),
    }
    reached = all(arm["time_to_target_s"] is not None for arm in arms.values())
    speedup = arms["baseline"]["time_to_target_s"] / arms["covidct"]["time_to_target_s"] if reached else None
    results = {
        "machine": machine_facts(),
        "data": {
            "dataset": "UCSD-AI4H COVID-CT, official split",
            "train_slices": sum(r["split"] == "train" for r in rows),
            "val_slices": sum(r["split"] == "val" for r in rows),
            "limit_per_split": args.limit,
        },
        "target_val_auc": args.target_auc,
        "max_minutes_per_arm": args.max_minutes,
        "imagenet_weights": pretrained.provenance,
        "covidct_recipe": config.to_dict(),
        "baseline_recipe": {
            "model": "torchvision resnet50, new 2-way fc",
            "precision": "fp32",
            "memory_format": "NCHW",
            "optimizer": "Adam",
            "lr": BASELINE_LR,
            "batch_size": BATCH,
            "augmentation": "RandomResizedCrop(224, scale 0.8-1) + horizontal flip",
        },
        "arms": arms,
        "speedup": round(speedup, 2) if speedup else None,
        "speedup_target": SPEEDUP_TARGET,
        "meets_target": speedup >= SPEEDUP_TARGET if speedup else None,
        "note": None
        if reached
        else (
            "an arm did not reach the target AUC within the cap: "
            "no ratio; compare best_val_auc and the epoch curves"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {
                name: {k: arm[k] for k in ("time_to_target_s", "best_val_auc", "epochs")}
                for name, arm in arms.items()
            }
            | {"speedup": results["speedup"]},
            indent=2,
        )
    )


def _limited(rows: list[dict], limit: int | None) -> list[dict]:
    if limit is None:
        return rows
    rng = random.Random(0)
    return [
        row
        for split in ("train", "val", "test")
        for row in rng.sample(
            [r for r in rows if r["split"] == split], min(limit, sum(r["split"] == split for r in rows))
        )
    ]


class _TargetReached(Exception):
    """Raised from an epoch callback to stop the covidct arm once it has reached the target (or the cap)."""


class _Clock(TrainCallbacks):
    """Records each epoch's validation AUC against the arm's wall clock and stops at the target or the cap."""

    def __init__(self, target_auc: float, max_minutes: float) -> None:
        self.started = time.perf_counter()
        self.target_auc, self.cap_s = target_auc, max_minutes * 60
        self.curve: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def record(self, epoch: int, val_auc: float) -> bool:
        """Log the epoch; True when the arm should stop (target reached or time cap passed)."""
        self.curve.append(
            {"epoch": epoch, "val_auc": round(val_auc, 4), "elapsed_s": round(self.elapsed(), 1)}
        )
        print(f"  epoch {epoch + 1}: val AUC {val_auc:.4f} at {self.elapsed():.0f} s", flush=True)
        return val_auc >= self.target_auc or self.elapsed() >= self.cap_s

    def on_epoch_end(self, record: dict, epochs: int) -> None:
        if self.record(record["epoch"], record["val_auc"]):
            raise _TargetReached

    def summary(self) -> dict:
        hits = [point["elapsed_s"] for point in self.curve if point["val_auc"] >= self.target_auc]
        return {
            "time_to_target_s": hits[0] if hits else None,
            "best_val_auc": max((point["val_auc"] for point in self.curve), default=None),
            "epochs": len(self.curve),
            "wall_time_s": round(self.elapsed(), 1),
            "curve": self.curve,
        }


def _covidct_arm(manifest_path: Path, workdir: Path, config: TrainConfig, pretrained, args) -> dict:
    print("covidct default recipe ...", flush=True)
    clock = _Clock(args.target_auc, args.max_minutes)
    try:
        fit(
            read_manifest(manifest_path),
            workdir / "model-covidct",
            config,
            pretrained=pretrained,
            callbacks=clock,
        )
    except _TargetReached:
        pass
    return clock.summary()


def _baseline_arm(rows: list[dict], pretrained, args) -> dict:
    print("plain fp32 full fine-tune ...", flush=True)
    clock = _Clock(args.target_auc, args.max_minutes)
    torch.manual_seed(0)
    train, val = (_read_split(rows, split) for split in ("train", "val"))
    model = build_resnet50(
        num_classes=2, stride_variant=pretrained.stride_variant
    )  # torchvision's ResNet-50, 2-way fc
    load_backbone_state(model, pretrained.state)
    optimizer = torch.optim.Adam(model.parameters(), lr=BASELINE_LR)
    augment = v2.Compose(
        [v2.RandomResizedCrop(224, scale=(0.8, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    )
    for epoch in range(BASELINE_MAX_EPOCHS):
        model.train()
        for batch in torch.randperm(len(train[1])).split(BATCH):
            images = torch.stack([augment(train[0][i]) for i in batch])
            loss = nn.functional.cross_entropy(model(images), train[1][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if clock.record(epoch, _val_auc(model, val)):
            break
    return clock.summary()


def _read_split(rows: list[dict], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 224, 224) float32 normalised images and (N,) labels (1 = COVID), decoded once with PIL."""
    chosen = [row for row in rows if row["split"] == split]
    normalise = v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    images = torch.stack(
        [
            normalise(Image.open(row["path"]).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
            for row in chosen
        ]
    )
    return images, torch.tensor([int(row["label"] == "COVID") for row in chosen])


@torch.no_grad()
def _val_auc(model: nn.Module, val: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    prob = torch.cat([torch.softmax(model(images), 1)[:, 1] for images in val[0].split(BATCH)])
    return float(roc_auc_score(val[1].numpy(), prob.numpy()))


if __name__ == "__main__":
    main()
